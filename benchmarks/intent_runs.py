"""Shared by benchmarks/recipe_auto.py and benchmarks/active_learning.py: run the real trainer on a
variant of examples/k8s/finetunejob-support-intents.yaml, and score a trained adapter on a row file.

Each run goes through `kubetune train` (a subprocess, exactly the path a training pod takes); the
outputs land under benchmarks/.runs/ (git-ignored), one folder per run, and a finished run is reused
when its metrics.json already exists (delete the folder to measure again).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "k8s" / "finetunejob-support-intents.yaml"
DATA = ROOT / "examples" / "data"
RUNS = ROOT / "benchmarks" / ".runs"


def manifest(name: str, training: dict[str, Any], dataset: dict[str, Any]) -> dict[str, Any]:
    """The example FineTuneJob with `training` and `dataset` fields overridden, no gate."""
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["metadata"]["name"] = name
    doc["spec"]["training"] |= training
    doc["spec"]["dataset"] |= dataset
    doc["spec"]["evaluation"].pop("minAccuracy", None)
    doc["spec"]["output"]["uri"] = f"pvc://kubetune-output/{name}"
    return doc


def train(doc: dict[str, Any], data: Path = DATA) -> dict[str, Any]:
    """Run `kubetune train` on the manifest (unless already done); returns its metrics.json."""
    name = doc["metadata"]["name"]
    out = RUNS / name
    metrics = out / "metrics.json"
    if metrics.is_file():
        return dict(json.loads(metrics.read_text()))
    RUNS.mkdir(parents=True, exist_ok=True)
    path = RUNS / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    log = RUNS / f"{name}.log"
    mounts = [f"kubetune-data={data}", f"kubetune-output={RUNS}", f"kubetune-bench={RUNS}"]
    command = [sys.executable, "-m", "kubetune.cli", "train", "-f", str(path), "--log-format", "json"]
    env = {**os.environ, "KUBETUNE_TERMINATION_LOG": str(RUNS / f"{name}.term")}
    with log.open("w") as f:
        done = subprocess.run(
            [*command, *(arg for m in mounts for arg in ("--pvc", m))],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
            check=False,
        )
    if done.returncode != 0:
        raise RuntimeError(f"kubetune train {name} failed ({done.returncode}); see {log}")
    return dict(json.loads(metrics.read_text()))


def adapter_on(doc: dict[str, Any], adapter: Path, rows: Path) -> tuple[Any, Any, Any, Any]:
    """A trained adapter folder on its base, and a JSONL file tokenized as its validation split, with
    the trainer's own code: (model, tokenized rows, task data, tokenizer)."""
    from kubetune_trainer.batches import tokenize_examples
    from kubetune_trainer.data import load_task_data
    from kubetune_trainer.models import load_tokenizer_and_model
    from peft import PeftModel

    from kubetune.api.loading import train_config_from_document

    scored = json.loads(json.dumps(doc))
    scored["spec"]["dataset"] = {"train": {"uri": uri(rows)}, "validation": {"uri": uri(rows)}}
    mounts = {"kubetune-data": str(DATA), "kubetune-output": str(RUNS), "kubetune-bench": str(RUNS)}
    config = train_config_from_document(scored, mounts, {})
    data = load_task_data(config)
    tokenizer, base = load_tokenizer_and_model(config, data.labels)
    model = PeftModel.from_pretrained(base, str(adapter))
    return (
        model,
        tokenize_examples(data.validation, tokenizer, config.training.max_seq_length),
        data,
        tokenizer,
    )


def score_adapter(doc: dict[str, Any], adapter: Path, rows: Path) -> dict[str, float]:
    """Accuracy/macro-F1 of a trained adapter folder on a JSONL file, with the trainer's own code."""
    import torch
    from kubetune_trainer.evaluate import evaluate_classifier

    model, seqs, data, tokenizer = adapter_on(doc, adapter, rows)
    return evaluate_classifier(model, seqs, data.labels, tokenizer.pad_token_id, torch.device("cpu")).metrics


def uri(path: Path) -> str:
    """pvc:// URI of a file under examples/data (kubetune-data) or benchmarks/.runs (kubetune-bench)."""
    path = path.resolve()
    if path.is_relative_to(DATA):
        return f"pvc://kubetune-data/{path.relative_to(DATA)}"
    return f"pvc://kubetune-bench/{path.relative_to(RUNS)}"


def load_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def machine() -> str:
    """What the numbers were measured on: CPU count and the load average at the time."""
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{os.cpu_count()} CPU cores shared with other sessions, load average {load}"
