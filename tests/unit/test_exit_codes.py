"""A base model that cannot load is a deterministic failure: exit 5, and the Job fails without a retry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from kubetune_operator.builders.training import build_training_job

from kubetune.api import exitcodes
from kubetune.api.finetunejob import FineTuneJob
from kubetune.launch import exit_code_for

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "k8s" / "finetunejob-support-intents.yaml"


def test_model_load_is_in_the_pod_failure_policy() -> None:
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["metadata"].update(namespace="ml", uid="0000-1111")
    job = build_training_job(FineTuneJob.model_validate(doc), doc, "img:1", "IfNotPresent", "sa")
    (fail,) = [r for r in job["spec"]["podFailurePolicy"]["rules"] if r["action"] == "FailJob"]
    assert exitcodes.MODEL_LOAD in fail["onExitCodes"]["values"]
    assert set(fail["onExitCodes"]["values"]) == set(exitcodes.NON_RETRYABLE)


def test_launch_keeps_model_load_and_invalid_config_behind_torchrun() -> None:
    def msg(reason: str) -> str:
        return json.dumps({"reason": reason})

    assert exit_code_for(1, msg("ModelLoad: pkg://x: Python package 'x' is not installed")) == 5
    assert exit_code_for(1, msg("InvalidConfig: recipe probe needs labels")) == exitcodes.INVALID_DATA


def test_train_with_a_missing_model_package_exits_model_load(tmp_path: Path) -> None:
    """The real `kubetune train` on the shipped example, its pkg:// model swapped for one not installed."""
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["spec"]["baseModel"]["name"] = "pkg://kubetune-no-such-model"
    manifest = tmp_path / "ftj.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    termination = tmp_path / "termination-log"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kubetune.cli",
            "train",
            "-f",
            str(manifest),
            "--pvc",
            f"kubetune-data={ROOT / 'examples' / 'data'}",
            "--pvc",
            f"kubetune-output={tmp_path}",
        ],
        env={**os.environ, "KUBETUNE_TERMINATION_LOG": str(termination), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == exitcodes.MODEL_LOAD, proc.stdout[-2000:] + proc.stderr[-2000:]
    reason = json.loads(termination.read_text())["reason"]
    assert reason.startswith("ModelLoad: pkg://kubetune-no-such-model"), reason
