"""Which tickets to label under a budget: random vs uncertainty vs uncertainty + diversity.

The served model is the example's LoRA adapter (recipe lora, from benchmarks/recipe_auto.py's run
on the shipped train split; trained here if that run is missing). It scores the unlabelled pool
(examples/data/support-intents-boundary/pool.jsonl: 120 boundary + 40 ordinary tickets) the way the
server does (softmax + mean-pooled embedding, serve/selection.py for margin and ordering). For each
rule and budget K in 20/50/100 the top K get their (hand-written) labels, and a retrain from the
base runs like the operator's: shipped train + the K labelled rows at weight 2
(retraining.freshDataWeight), recipe lora, 1 epoch (to fit 9 runs on 2 shared cores), seed 42.
Scored on the boundary test set (80 tickets, never selectable); the frozen-embedding probe fitted
on the same rows is reported beside each number.
Writes benchmarks/ACTIVE_LEARNING_RESULTS.md.  Run: .venv/bin/python benchmarks/active_learning.py
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from intent_runs import DATA, RUNS, adapter_on, load_rows, machine, manifest, score_adapter, train, uri

RESULTS = Path(__file__).with_name("ACTIVE_LEARNING_RESULTS.md")
POOL = DATA / "support-intents-boundary" / "pool.jsonl"
TEST = DATA / "support-intents-boundary" / "test.jsonl"
BUDGETS = (20, 50, 100)
RUN_ORDER = (50, 20, 100)  # the middle budget first: on a loaded machine it is the one to have
RULES = ("random", "uncertainty", "diverse")
SEED = 0
CLUSTERS = 8


def served_adapter() -> tuple[dict, Path]:
    doc = manifest("bench-auto-shipped", {"recipe": "auto"}, {})
    folder = RUNS / "bench-auto-shipped" / "candidates" / "lora" / "adapter"
    if not folder.is_dir():
        doc = manifest("bench-served-lora", {}, {})
        train(doc)
        folder = RUNS / "bench-served-lora" / "adapter"
    return doc, folder


def score_pool(
    doc: dict, adapter: Path, rows: list[dict], path: Path = POOL
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Probabilities and mean-pooled embeddings of the served adapter on `path` (rows), in row order."""
    import torch
    from kubetune_trainer.evaluate import classify

    model, seqs, data, tokenizer = adapter_on(doc, adapter, path)
    probs, embeddings = classify(model, seqs, tokenizer.pad_token_id, torch.device("cpu"))
    assert len(probs) == len(rows)
    return probs, embeddings, data.labels


def choose(rule: str, k: int, margins: list[float], embeddings: np.ndarray) -> list[int]:
    from kubetune_trainer.serve.selection import order_for_labelling

    if rule == "random":
        return np.random.default_rng(SEED).permutation(len(margins))[:k].tolist()
    return order_for_labelling(margins, embeddings, rule, clusters=CLUSTERS, seed=SEED)[:k]  # type: ignore[arg-type]


def main() -> None:
    from kubetune_trainer.serve.selection import kmeans, margin

    started = time.time()
    pool = load_rows(POOL)
    doc, adapter = served_adapter()
    probs, embeddings, labels = score_pool(doc, adapter, pool)
    margins = [margin(p) for p in probs]
    wrong = [labels[int(p.argmax())] != row["label"] for p, row in zip(probs, pool, strict=True)]
    served_test = score_adapter(doc, adapter, TEST)["accuracy"]
    clusters = kmeans(embeddings, CLUSTERS, SEED)
    # K = 0: the same retrain without any labelled pool rows, the fair reference for every cell.
    unlabelled = train(
        manifest("bench-al-none-0", {"recipe": "lora", "epochs": 1}, {"validation": {"uri": uri(TEST)}})
    )
    reference = (unlabelled["after"]["accuracy"], unlabelled["baseline"]["accuracy"])
    rows: list[dict] = []
    for k in RUN_ORDER:
        for rule in RULES:
            picked = choose(rule, k, margins, embeddings)
            selection = RUNS / "al" / f"{rule}-{k}.jsonl"
            selection.parent.mkdir(parents=True, exist_ok=True)
            selection.write_text("".join(json.dumps(pool[i], ensure_ascii=False) + "\n" for i in picked))
            run = manifest(
                f"bench-al-{rule}-{k}",
                {"recipe": "lora", "epochs": 1},
                {"extra": [{"uri": uri(selection), "weight": 2}], "validation": {"uri": uri(TEST)}},
            )
            metrics = train(run)
            rows.append(
                {
                    "rule": rule,
                    "k": k,
                    "after": metrics["after"]["accuracy"],
                    "probe": metrics["baseline"]["accuracy"],
                    "boundary": sum(pool[i]["kind"] == "boundary" for i in picked),
                    "wrong": sum(wrong[i] for i in picked),
                    "clusters": len({int(clusters[i]) for i in picked}),
                }
            )
            print(rows[-1], flush=True)
            write(rows, served_test, reference, sum(wrong), len(pool), time.time() - started)  # partial too


def write(
    rows: list[dict],
    served_test: float,
    reference: tuple[float, float],
    wrong: int,
    pool: int,
    seconds: float,
) -> None:
    def cell(rule: str, k: int) -> str:
        r = next((r for r in rows if r["rule"] == rule and r["k"] == k), None)
        return "not run" if r is None else f"{100 * r['after']:.1f}% (probe {100 * r['probe']:.1f}%)"

    def picked(rule: str, k: int) -> str:
        r = next((r for r in rows if r["rule"] == rule and r["k"] == k), None)
        return "not run" if r is None else f"{r['boundary']} / {r['wrong']} / {r['clusters']}"

    lines = [
        "# Active learning: which tickets to label (support-intents boundary cases, MiniLM)",
        "",
        "Produced by `benchmarks/active_learning.py`. Pool: 160 unlabelled tickets written for this",
        "benchmark (120 on the border of two intents, 40 ordinary); test: 80 other boundary tickets.",
        f"The served model (the example's LoRA adapter, trained on the 480 shipped tickets) gets "
        f"{100 * served_test:.1f}% of the boundary test right and {wrong} of the {pool} pool tickets wrong.",
        "Each cell: accuracy on the boundary test after a retrain on shipped train + the K labelled",
        "tickets (weight 2, recipe lora, 1 epoch, seed 42), with the frozen-embedding logistic-regression",
        "probe fitted on the same rows in brackets. random: numpy seed 0; diverse: 8 k-means clusters,",
        "seed 0. The served model's own test accuracy (K = 0) is above.",
        "",
        f"The same retrain with no pool labels (K = 0): {100 * reference[0]:.1f}% "
        f"(probe {100 * reference[1]:.1f}%).",
        "",
        "| rule | K = 20 | K = 50 | K = 100 |",
        "|---|---|---|---|",
        *(f"| {rule} | " + " | ".join(cell(rule, k) for k in BUDGETS) + " |" for rule in RULES),
        "",
        "What each rule picked (boundary tickets / tickets the served model got wrong / clusters covered",
        "of 8):",
        "",
        "| rule | K = 20 | K = 50 | K = 100 |",
        "|---|---|---|---|",
        *(f"| {rule} | " + " | ".join(picked(rule, k) for k in BUDGETS) + " |" for rule in RULES),
        "",
        f"Machine: {machine()} (when this table was written). This script ran {seconds / 60:.0f} min; runs",
        "finished earlier under benchmarks/.runs are reused, and each retrain is 31 to 43 optimizer steps.",
        "One seed per cell: differences of one or two test tickets (1.25 points each) are within noise.",
        "",
    ]
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
