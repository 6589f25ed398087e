"""The real trainer (MiniLM, a few steps) writes each run into its own folder: a second run of the
same job never touches the first run's adapter, and the termination message names the run's adapter
and its digest, which is what the ServeConfig pins."""

from __future__ import annotations

from pathlib import Path

import yaml
from kubetune_trainer.artifacts import adapter_digest
from test_trainer_minilm import kubetune_train, write_dataset, write_manifest

from kubetune.api.finetunejob import TrainResult
from kubetune.api.loading import load_train_config

RUN_1, RUN_2 = "3f9a1c2e-0000-4000-8000-000000000001", "77aa0b3c-0000-4000-8000-000000000002"


def train_run(workspace: Path, run_id: str, seed: int) -> TrainResult:
    """`kubetune train` on the TrainConfig the operator would write for run ``run_id``."""
    manifest = write_manifest(workspace / "job.yaml", maxSteps=3, seed=seed)
    config = load_train_config(manifest, {}, {}).model_copy(update={"run_id": run_id})
    path = workspace / f"train-config-{run_id}.yaml"
    path.write_text(yaml.safe_dump(config.wire()))
    proc = kubetune_train(workspace, path)
    stdout, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, stdout[-2000:]
    return TrainResult.model_validate_json((workspace / "out.termination").read_text())


def test_two_runs_write_two_folders_and_never_overwrite_each_other(tmp_path: Path) -> None:
    workspace = tmp_path
    write_dataset(workspace / "data" / "tiny", rows_per_label=8)
    first = train_run(workspace, RUN_1, seed=1)
    weights_1 = workspace / "out" / "tiny" / "tiny" / RUN_1 / "adapter" / "adapter_model.safetensors"
    assert first.adapter_uri == f"pvc://out/tiny/tiny/{RUN_1}/adapter"
    assert first.digest == adapter_digest(weights_1.parent)
    assert (weights_1.parents[1] / "checkpoints").is_dir()  # a resumed pod of this run finds them here
    assert not (workspace / "out" / "tiny" / "adapter").exists()

    second = train_run(workspace, RUN_2, seed=2)
    weights_2 = workspace / "out" / "tiny" / "tiny" / RUN_2 / "adapter" / "adapter_model.safetensors"
    assert second.adapter_uri == f"pvc://out/tiny/tiny/{RUN_2}/adapter"
    assert second.digest == adapter_digest(weights_2.parent) != first.digest
    assert adapter_digest(weights_1.parent) == first.digest, "the second run changed the first run's adapter"
