"""Does a LoRA retrain on the loop's labels lift the hard and the mixed-language tickets? (issue 23)

One retrain like the operator's (shipped train + every boundary- and hard-pool ticket labelled, 276 at
weight 2, recipe lora, 1 epoch, seed 42; its validation rows are the hard test), then the served adapter
(benchmarks/active_learning.served_adapter) and the retrained one scored on the hard test, the hard
final check, the boundary test and the 40 es/en tickets (none of which it trained on). Prints the
accuracies; the table with Wilson intervals is in ACTIVE_LEARNING_RESULTS.md. The probe-recipe
retrains over rules, budgets and seeds are active_learning.py's.
Run: nice -n 5 .venv/bin/python benchmarks/loop_lift.py (about 15 min of 2 shared cores)
"""

from __future__ import annotations

from active_learning import HARD, POOL, SPANISH, TESTS, served_adapter
from intent_runs import RUNS, manifest, score_adapter, train, uri


def main() -> None:
    labelled = RUNS / "al-all-pool.jsonl"
    rows = [line for p in (HARD / "pool.jsonl", POOL) for line in p.read_text().splitlines() if line.strip()]
    labelled.write_text("\n".join(rows) + "\n")
    doc = manifest(
        "bench-al-lora-allpool",
        {"recipe": "lora", "epochs": 1},
        {"extra": [{"uri": uri(labelled), "weight": 2}], "validation": {"uri": uri(TESTS["hard test"])}},
    )
    train(doc)
    served_doc, served = served_adapter()
    for name, path in {**TESTS, "hard final": HARD / "final.jsonl", "es/en (40)": SPANISH}.items():
        before = score_adapter(served_doc, served, path)["accuracy"]
        after = score_adapter(doc, RUNS / "bench-al-lora-allpool" / "adapter", path)["accuracy"]
        print(f"{name}: served {before:.4f}, after the retrain {after:.4f}", flush=True)


if __name__ == "__main__":
    main()
