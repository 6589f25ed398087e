"""The heads recipe (decoder_heads.py) on the support-triage tickets, SmolLM2-135M-Instruct: mean vs
last-token pooling, scored on tickets held out of train (what chooses) and on the 124 validation
tickets (reported only).

Trains on train minus the held-out split (heads_recipe.selection_split: 20%, seeded), with the
example's settings (examples/k8s/finetunejob-support-triage.yaml). Prints a Markdown table and the
CPU and wall seconds of each arm.  Run: nice -n 5 .venv/bin/python benchmarks/triage_heads.py [mean last]
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]


def main(poolings: list[str]) -> None:
    from kubetune_trainer import heads_recipe
    from kubetune_trainer.checkpoint import Progress
    from kubetune_trainer.closed_set import schema_of
    from kubetune_trainer.data import load_task_data
    from kubetune_trainer.logs import EventLog
    from kubetune_trainer.models import load_tokenizer_and_model
    from kubetune_trainer.train import SingleProcess
    from transformers import set_seed

    from kubetune.api.loading import load_train_config

    config = load_train_config(
        ROOT / "examples/k8s/finetunejob-support-triage.yaml",
        pvc_mounts={"kubetune-data": str(ROOT / "examples/data"), "kubetune-output": "/tmp/triage-heads"},
        configmap_mounts={},
    )
    data = load_task_data(config)
    rows: list[tuple[str, dict[str, float], dict[str, float], float, float]] = []
    for pooling in poolings:
        set_seed(config.training.seed)
        tokenizer, base = load_tokenizer_and_model(config, [])
        schema, _ = schema_of(data.train, tokenizer)
        fit_rows, select_rows = heads_recipe.selection_split(data.train, config.training.seed)
        ctx = SimpleNamespace(
            config=config,
            tokenizer=tokenizer,
            processes=SingleProcess(),
            log=EventLog("text"),
            val_examples=data.validation,
            answer_schema=schema,
        )
        cpu, wall = time.process_time(), time.monotonic()
        fitted = heads_recipe.fit_heads(ctx, base, fit_rows, Progress(), f"heads-{pooling}", pooling)  # type: ignore[arg-type]
        held = heads_recipe.held_out_metrics(ctx, fitted, select_rows)
        reading = f"{pooling}, layers {fitted.heads.depth - fitted.heads.span + 1}-{fitted.heads.depth}"
        rows.append((reading, held, fitted.after.metrics, time.process_time() - cpu, time.monotonic() - wall))
        print(f"{reading}: held-out {held} validation {fitted.after.metrics}", flush=True)
    print(
        f"\nfit rows {len(fit_rows)}, held-out rows {len(select_rows)}, "
        f"validation rows {len(data.validation)}"
    )
    print(
        "| reading (pooling, layers averaged) | held-out intent | held-out priority "
        "| validation intent | validation priority | CPU s | wall s |"
    )
    print("|---|---|---|---|---|---|---|")
    for pooling, held, val, cpu_s, wall_s in rows:
        print(
            f"| {pooling} | {100 * held['intent_exact_match']:.1f}% "
            f"| {100 * held['priority_exact_match']:.1f}% "
            f"| {100 * val['intent_exact_match']:.1f}% | {100 * val['priority_exact_match']:.1f}% "
            f"| {cpu_s:.0f} | {wall_s:.0f} |"
        )
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main(sys.argv[1:] or ["mean", "last"])
