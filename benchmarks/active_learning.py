"""Which tickets to label under a budget, measured: random vs uncertainty vs diversity vs the rest.

The served model is the example's LoRA adapter (recipe lora on the 480 shipped tickets, from
benchmarks/recipe_auto.py's run or trained here), calibrated with a temperature fitted on the shipped
validation rows (temperature.py; they are held out from its training). It scores an unlabelled pool the
way the server does (calibrated softmax, mean-pooled embedding, novelty against the validation
embeddings as in reference_stats.json): the boundary pool (160), the hard pool (116, written for issue
23: the words of one intent, the request of another) and half of the es/en tickets (20).

Each seed (SEEDS of them) draws 80% of that pool as the traffic a reviewer sees; each rule picks K of
it (K in BUDGETS). Reported per rule and K, as mean and 95% t-interval over the seeds:
  caught      the picked tickets the served model got wrong, per label spent (mistakes caught / K)
  accuracy    after a retrain on shipped train + the K labelled tickets at weight 2
              (retraining.freshDataWeight) with the probe recipe (logistic regression on frozen MiniLM
              embeddings, evaluate.linear_probe), on the hard test (78), the boundary test (80) and the
              held-out es/en half (20). The probe stands in for the LoRA retrain so that
              rules x budgets x seeds retrains fit on 2 shared cores; PEER-LESSONS records that it tracks
              the adapter on these tickets.
The hard set's final.jsonl (42) is never used to choose anything: it is scored once, for the winner
and for random, at the largest K. Writes benchmarks/ACTIVE_LEARNING_RESULTS.md.
Run: nice -n 5 .venv/bin/python benchmarks/active_learning.py
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from intent_runs import DATA, RUNS, adapter_on, load_rows, machine, manifest, train, uri

RESULTS = Path(__file__).with_name("ACTIVE_LEARNING_RESULTS.md")
POOL = DATA / "support-intents-boundary" / "pool.jsonl"
HARD = DATA / "support-intents-hard"
SPANISH = DATA / "support-intents-es-mixed" / "test.jsonl"
SHIPPED = DATA / "support-intents"
TESTS = {
    "hard test": HARD / "test.jsonl",
    "boundary test": DATA / "support-intents-boundary" / "test.jsonl",
}
BUDGETS = (20, 40, 80)
SEEDS = 10
TRAFFIC_SHARE = 0.8
CLUSTERS = 8
FRESH_WEIGHT = 2.0
SPLIT_SEED = 23


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


# ---------------------------------------------------------------- the data as the server and probe see it


def frozen_embeddings(doc: dict, paths: list[Path]) -> dict[Path, np.ndarray]:
    """Mean-pooled embeddings of the bare MiniLM (no adapter) per file: what the probe recipe fits on."""
    import torch
    from kubetune_trainer.batches import tokenize_examples
    from kubetune_trainer.data import load_task_data
    from kubetune_trainer.evaluate import classify
    from kubetune_trainer.models import load_tokenizer_and_model

    from kubetune.api.loading import train_config_from_document

    out: dict[Path, np.ndarray] = {}
    tokenizer = base = None
    for path in paths:
        scored = json.loads(json.dumps(doc))
        scored["spec"]["dataset"] = {"train": {"uri": uri(path)}, "validation": {"uri": uri(path)}}
        mounts = {"kubetune-data": str(DATA), "kubetune-output": str(RUNS), "kubetune-bench": str(RUNS)}
        config = train_config_from_document(scored, mounts, {})
        data = load_task_data(config)
        if base is None:
            tokenizer, base = load_tokenizer_and_model(config, data.labels)
        seqs = tokenize_examples(data.validation, tokenizer, config.training.max_seq_length)
        out[path] = classify(base, seqs, tokenizer.pad_token_id, torch.device("cpu"))[1]
    return out


def labels_of(rows: list[dict], labels: list[str]) -> np.ndarray:
    return np.array([labels.index(r["label"]) for r in rows])


# ---------------------------------------------------------------- the rules


def entropy(p: np.ndarray) -> np.ndarray:
    return np.asarray(-(p * np.log(np.clip(p, 1e-12, 1.0))).sum(-1))


def rank(values: np.ndarray) -> np.ndarray:
    """0 for the smallest value."""
    return np.argsort(np.argsort(values, kind="stable"), kind="stable").astype(float)


def badge(probs: np.ndarray, embeddings: np.ndarray, k: int, rng: np.random.Generator) -> list[int]:
    """BADGE (Ash et al. 2020): k-means++ seeding over the last layer's gradient embeddings
    (p - onehot(argmax)) x embedding, so the picks are both uncertain (long gradients) and different."""
    x = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    residual = probs.copy()
    residual[np.arange(len(probs)), probs.argmax(-1)] -= 1.0
    g = (residual[:, :, None] * x[:, None, :]).reshape(len(x), -1)
    picked = [int(np.argmax((g * g).sum(1)))]
    d2 = ((g - g[picked[0]]) ** 2).sum(1)
    while len(picked) < min(k, len(g)):
        choice = int(rng.choice(len(g), p=d2 / d2.sum())) if d2.sum() > 0 else int(rng.integers(len(g)))
        picked.append(choice)
        d2 = np.minimum(d2, ((g - g[choice]) ** 2).sum(1))
    return picked


def rules() -> dict[str, Callable[[dict, int, np.random.Generator], list[int]]]:
    """name -> (pool signals, K, rng) -> picked indices. Signals: calibrated probabilities `probs`,
    calibrated `margin`, `novelty`, served-model `embeddings`."""
    from kubetune_trainer.serve.selection import order_for_labelling

    return {
        "random": lambda s, k, rng: rng.permutation(len(s["margin"]))[:k].tolist(),
        "uncertainty (margin)": lambda s, k, rng: order_for_labelling(s["margin"], None, "uncertainty")[:k],
        "entropy": lambda s, k, rng: np.argsort(-entropy(s["probs"]), kind="stable")[:k].tolist(),
        "diverse (margin + clusters)": lambda s, k, rng: order_for_labelling(
            s["margin"], s["embeddings"], "diverse", CLUSTERS, int(rng.integers(1 << 16))
        )[:k],
        "uncertain + novel": lambda s, k, rng: np.argsort(
            rank(s["margin"]) + rank(-s["novelty"]), kind="stable"
        )[:k].tolist(),
        "badge": lambda s, k, rng: badge(s["probs"], s["embeddings"], k, rng),
    }


# ---------------------------------------------------------------- retrain and score


def probe_accuracy(
    train_x: np.ndarray,
    train_y: np.ndarray,
    weights: np.ndarray,
    tests: dict[str, tuple[np.ndarray, np.ndarray]],
) -> dict[str, float]:
    """The probe recipe (evaluate.linear_probe's model) fitted with per-row weights, scored per test."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import normalize

    probe = LogisticRegression(max_iter=2000, C=10.0)
    probe.fit(normalize(train_x), train_y, sample_weight=weights)
    return {name: float((probe.predict(normalize(x)) == y).mean()) for name, (x, y) in tests.items()}


def interval(values: list[float]) -> tuple[float, float, float]:
    """(mean, low, high): the 95% t-interval of the mean over seeds."""
    from scipy.stats import t

    v = np.asarray(values, dtype=float)
    half = t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else 0.0
    return float(v.mean()), float(v.mean() - half), float(v.mean() + half)


def main() -> None:
    from kubetune_trainer.serve.selection import margin, novelty
    from kubetune_trainer.temperature import calibrate, scaled

    started = time.time()
    doc, adapter = served_adapter()
    shipped_val = load_rows(SHIPPED / "validation.jsonl")
    val_probs, val_emb, labels = score_pool(doc, adapter, shipped_val, SHIPPED / "validation.jsonl")
    calibration = calibrate(val_probs, labels_of(shipped_val, labels))
    spanish = load_rows(SPANISH)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(spanish))
    spanish_pool, spanish_test = order[: len(order) // 2], order[len(order) // 2 :]
    sources = [POOL, HARD / "pool.jsonl", SPANISH]
    pool_rows, served_probs, served_emb = [], [], []
    for path in sources:
        rows = load_rows(path)
        probs, emb, _ = score_pool(doc, adapter, rows, path)
        keep = spanish_pool if path == SPANISH else np.arange(len(rows))
        pool_rows += [rows[i] for i in keep]
        served_probs.append(probs[keep])
        served_emb.append(emb[keep])
    probs = scaled(np.concatenate(served_probs), calibration.temperature)
    embeddings = np.concatenate(served_emb)
    signals_all = {
        "probs": probs,
        "margin": np.array([margin(p) for p in probs]),
        "novelty": novelty(embeddings, val_emb),
        "embeddings": embeddings,
    }
    wrong = np.array([labels[int(p.argmax())] != r["label"] for p, r in zip(probs, pool_rows, strict=True)])
    pool_y = labels_of(pool_rows, labels)

    frozen = frozen_embeddings(
        doc, [SHIPPED / "train.jsonl", *sources, *TESTS.values(), HARD / "final.jsonl"]
    )
    pool_x = np.concatenate([frozen[POOL], frozen[HARD / "pool.jsonl"], frozen[SPANISH][spanish_pool]])
    train_rows = load_rows(SHIPPED / "train.jsonl")
    train_x, train_y = frozen[SHIPPED / "train.jsonl"], labels_of(train_rows, labels)
    tests = {name: (frozen[path], labels_of(load_rows(path), labels)) for name, path in TESTS.items()}
    tests["es/en held-out half"] = (frozen[SPANISH][spanish_test], labels_of(spanish, labels)[spanish_test])
    final = {"hard final": (frozen[HARD / "final.jsonl"], labels_of(load_rows(HARD / "final.jsonl"), labels))}
    every_test = {**tests, **final}

    def retrain(picked: list[int]) -> dict[str, float]:
        x = np.concatenate([train_x, pool_x[picked]])
        y = np.concatenate([train_y, pool_y[picked]])
        w = np.concatenate([np.ones(len(train_x)), np.full(len(picked), FRESH_WEIGHT)])
        return probe_accuracy(x, y, w, every_test)

    none = retrain([])
    cells: dict[tuple[str, int], list[dict]] = {}
    for seed in range(SEEDS):
        rng = np.random.default_rng(seed)
        traffic = np.sort(rng.permutation(len(pool_rows))[: round(TRAFFIC_SHARE * len(pool_rows))])
        signals = {key: value[traffic] for key, value in signals_all.items()}
        for name, rule in rules().items():
            for k in BUDGETS:
                picked = traffic[rule(signals, k, np.random.default_rng([seed, k]))].tolist()
                cells.setdefault((name, k), []).append(
                    {"caught": float(wrong[picked].sum()) / k, **retrain(picked)}
                )
        print(f"seed {seed} done ({time.time() - started:.0f} s)", flush=True)
    write(cells, none, calibration, int(wrong.sum()), len(pool_rows), time.time() - started)


def write(
    cells: dict[tuple[str, int], list[dict]],
    none: dict[str, float],
    calibration,
    wrong: int,
    pool: int,
    seconds: float,
) -> None:
    names = list(dict.fromkeys(name for name, _ in cells))

    def fmt(values: list[float], scale: float = 100.0) -> str:
        mean, low, high = interval(values)
        return f"{scale * mean:.1f} [{scale * low:.1f}, {scale * high:.1f}]"

    def paired(name: str, k: int, key: str) -> list[float]:
        return [a[key] - b[key] for a, b in zip(cells[(name, k)], cells[("random", k)], strict=True)]

    caught_mean = {
        name: np.mean([np.mean([c["caught"] for c in cells[(name, k)]]) for k in BUDGETS]) for name in names
    }
    winner = max((n for n in names if n != "random"), key=lambda n: caught_mean[n])
    lines = [
        "# Active learning: which tickets to label (MiniLM, boundary + hard + es/en pool)",
        "",
        "Produced by `benchmarks/active_learning.py` (method in its docstring). Pool: "
        f"{pool} unlabelled tickets (boundary pool 160, hard pool 116, es/en half 20); the served LoRA",
        f"adapter gets {wrong} of them wrong. Calibration of the served adapter: temperature "
        f"{calibration.temperature:.2f} (fitted on the 120 shipped validation rows; expected calibration"
        f" error {calibration.ece_before} before, {calibration.ece_after} after).",
        f"{SEEDS} seeds, each a random {round(100 * TRAFFIC_SHARE)}% of the pool; cells are the mean over"
        " seeds with the 95% t-interval in brackets.",
        "",
        "## Mistakes caught per label spent (% of the K picked tickets the served model got wrong)",
        "",
        f"Base rate (random's expectation): {100 * wrong / pool:.1f}%.",
        "",
        "| rule | " + " | ".join(f"K = {k}" for k in BUDGETS) + " |",
        "|---|" + "---|" * len(BUDGETS),
        *(
            f"| {n} | " + " | ".join(fmt([c["caught"] for c in cells[(n, k)]]) for k in BUDGETS) + " |"
            for n in names
        ),
        "",
        "Paired difference to random on the same seed (percentage points of K):",
        "",
        "| rule | " + " | ".join(f"K = {k}" for k in BUDGETS) + " |",
        "|---|" + "---|" * len(BUDGETS),
        *(
            f"| {n} | " + " | ".join(fmt(paired(n, k, "caught")) for k in BUDGETS) + " |"
            for n in names
            if n != "random"
        ),
    ]
    for test in ("hard test", "boundary test", "es/en held-out half"):
        lines += [
            "",
            f"## Accuracy (%) on the {test} after the retrain",
            "",
            "Probe recipe on shipped train + the K labelled tickets at weight 2.",
            "",
            f"No pool labels (K = 0): {100 * none[test]:.1f}%.",
            "",
            "| rule | " + " | ".join(f"K = {k}" for k in BUDGETS) + " |",
            "|---|" + "---|" * len(BUDGETS),
            *(
                f"| {n} | " + " | ".join(fmt([c[test] for c in cells[(n, k)]]) for k in BUDGETS) + " |"
                for n in names
            ),
        ]
    k = BUDGETS[-1]
    lines += [
        "",
        f"## Final check (hard final.jsonl, 42 tickets never used to choose anything), K = {k}",
        "",
        f"No pool labels: {100 * none['hard final']:.1f}%;"
        f" random: {fmt([c['hard final'] for c in cells[('random', k)]])};"
        f" {winner}: {fmt([c['hard final'] for c in cells[(winner, k)]])}; paired difference"
        f" {fmt(paired(winner, k, 'hard final'))} points.",
        "",
        f"Winner on mistakes caught per label (mean over K): **{winner}**.",
        "",
        f"Machine: {machine()}. This script ran {seconds / 60:.1f} min.",
        "",
    ]
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
