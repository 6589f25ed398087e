"""How many served inputs the review queue's default thresholds catch, and how many of the model's
mistakes among them, with the example's LoRA adapter (from benchmarks/recipe_auto.py's first run).

Novelty is measured against the adapter's own reference_stats.json sample (drawn from the shipped
validation rows, so those rows score 0 by construction). Writes benchmarks/REVIEW_THRESHOLDS.md.
Run after recipe_auto.py: .venv/bin/python benchmarks/review_thresholds.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from active_learning import score_pool
from intent_runs import DATA, RUNS, load_rows, machine, manifest

RESULTS = Path(__file__).with_name("REVIEW_THRESHOLDS.md")
SETS = {
    "shipped validation (120)": DATA / "support-intents" / "validation.jsonl",
    "boundary test (80)": DATA / "support-intents-boundary" / "test.jsonl",
    "es/en mixed (40)": DATA / "support-intents-es-mixed" / "test.jsonl",
}


def main() -> None:
    from kubetune_trainer.serve.selection import margin, novelty

    from kubetune.api.adapterdeployment import ReviewSpec

    defaults = ReviewSpec()
    doc = manifest("bench-auto-shipped", {"recipe": "auto"}, {})
    adapter = RUNS / "bench-auto-shipped" / "candidates" / "lora" / "adapter"
    stats = json.loads((RUNS / "bench-auto-shipped" / "reference_stats.json").read_text())
    reference = np.asarray(stats["embeddingSample"])
    lines = [
        "# Review queue thresholds on the example's LoRA adapter",
        "",
        f"Defaults: margin < {defaults.margin_threshold} (uncertain) or novelty > "
        f"{defaults.novelty_threshold} (novel). Produced by `benchmarks/review_thresholds.py`.",
        "",
        "| set | model wrong | queued: uncertain / novel / either | wrong and queued | median novelty |",
        "|---|---|---|---|---|",
    ]
    for name, path in SETS.items():
        rows = load_rows(path)
        probs, embeddings, labels = score_pool(doc, adapter, rows, path)
        m = np.array([margin(p) for p in probs])
        far = novelty(embeddings, reference)
        wrong = np.array([labels[int(p.argmax())] != r["label"] for p, r in zip(probs, rows, strict=True)])
        uncertain, novel = m < defaults.margin_threshold, far > defaults.novelty_threshold
        either = uncertain | novel
        lines.append(
            f"| {name} | {wrong.sum()} | {uncertain.sum()} / {novel.sum()} / {either.sum()} | "
            f"{(wrong & either).sum()} of {wrong.sum()} | {np.median(far):.3f} |"
        )
    lines += ["", f"Machine: {machine()}.", ""]
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
