"""training.recipe: auto on the support-intents example: probe vs LP-FT LoRA vs full fine-tune.

Two runs of the real trainer (`kubetune train`, recipe auto, the example's settings otherwise):
  shipped    train = support-intents/train.jsonl (480), validation = support-intents/validation.jsonl
             (120). Each candidate adapter is then also scored on the boundary test set (80) and the
             Spanish/English mixed set (40), which none of them saw.
  boundary   (with --with-boundary-run) train = the same + the boundary pool (160, every row
             labelled, weight 2 as retraining.freshDataWeight would give it), 1 epoch (to fit the
             shared machine), validation = the boundary test set (80).
Writes benchmarks/RECIPE_AUTO_RESULTS.md.  Run: .venv/bin/python benchmarks/recipe_auto.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from intent_runs import DATA, RUNS, machine, manifest, score_adapter, train

RESULTS = Path(__file__).with_name("RECIPE_AUTO_RESULTS.md")
SETS = {
    "boundary": DATA / "support-intents-boundary" / "test.jsonl",
    "es": DATA / "support-intents-es-mixed" / "test.jsonl",
}
RECIPES = ("probe", "lora", "full")


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def seconds(m: dict) -> str:
    return ", ".join(f"{r} {m['recipeSeconds'][r]:.0f} s" for r in RECIPES)


def main() -> None:
    started = time.time()
    shipped_doc = manifest("bench-auto-shipped", {"recipe": "auto"}, {})
    shipped = train(shipped_doc)
    shipped_load = machine()
    candidates = RUNS / "bench-auto-shipped" / "candidates"
    unseen = {
        r: {
            name: score_adapter(shipped_doc, candidates / r / "adapter", rows)["accuracy"]
            for name, rows in SETS.items()
        }
        for r in RECIPES
    }
    lines = [
        "# training.recipe: auto — probe vs LoRA vs full fine-tune (support-intents, MiniLM)",
        "",
        "Produced by `benchmarks/recipe_auto.py` with the real trainer (`kubetune train`, recipe auto, the",
        "example's settings: batch 16, maxSeqLength 64, lr 5e-4 for LoRA and 5e-5 for full, seed 42).",
        "`probe` = logistic regression on frozen mean-pooled embeddings used as the head (no training);",
        "`lora` = LP-FT LoRA r=16; `full` = every Linear weight of the encoder + head (embeddings, biases,",
        "LayerNorms frozen). Bold: the winner on the run's validation split, which the run keeps.",
        "",
        "## Run 1: trained on the shipped train split (480 tickets, 2 epochs)",
        "",
        "| candidate | shipped validation (120), selects | boundary test (80), unseen | es/en (40), unseen |",
        "|---|---|---|---|",
        *(
            f"| {f'**{r}**' if shipped['recipe'] == r else r} | {pct(shipped['recipes'][r]['accuracy'])} | "
            f"{pct(unseen[r]['boundary'])} | {pct(unseen[r]['es'])} |"
            for r in RECIPES
        ),
        "",
        f"before (untrained head) {pct(shipped['before']['accuracy'])}; training time: {seconds(shipped)}.",
        f"Machine: {shipped_load} (when this table was written; a reused run may be older).",
        "Seconds per candidate swing with the other sessions' load.",
        "",
    ]
    if "--with-boundary-run" in sys.argv:
        doc = manifest(
            "bench-auto-boundary",
            {"recipe": "auto", "epochs": 1},
            {
                "extra": [{"uri": "pvc://kubetune-data/support-intents-boundary/pool.jsonl", "weight": 2}],
                "validation": {"uri": "pvc://kubetune-data/support-intents-boundary/test.jsonl"},
            },
        )
        boundary = train(doc)
        lines += [
            "## Run 2: + the 160 labelled boundary-pool tickets (weight 2), 1 epoch, boundary test selects",
            "",
            "| candidate | boundary test (80), selects |",
            "|---|---|",
            *(
                f"| {f'**{r}**' if boundary['recipe'] == r else r} | "
                f"{pct(boundary['recipes'][r]['accuracy'])} |"
                for r in RECIPES
            ),
            "",
            f"before {pct(boundary['before']['accuracy'])}; training time: {seconds(boundary)}.",
            f"Machine: {machine()} (when this table was written; a reused run may be older).",
            "Seconds per candidate swing with the other sessions' load.",
            "",
        ]
    lines.append(
        f"Wall time of this script: {time.time() - started:.0f} s (finished runs in benchmarks/.runs reused)."
    )
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
