"""`kubetune launch` keeps the trainer's exit code behind torchrun."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from kubetune.api import exitcodes
from kubetune.launch import exit_code_for


def test_reason_prefixes_map_to_the_trainer_exit_codes() -> None:
    msg = lambda reason: json.dumps({"reason": reason})  # noqa: E731
    assert (
        exit_code_for(1, msg("InvalidData: train.jsonl row 3: field 'label' missing"))
        == exitcodes.INVALID_DATA
    )
    assert exit_code_for(1, msg("GateFailed: accuracy 0.5 < 0.85")) == exitcodes.GATE_FAILED
    assert exit_code_for(1, msg("Preempted: SIGTERM at step 40")) == exitcodes.PREEMPTED
    assert exit_code_for(1, msg("RuntimeError: CUDA out of memory")) == 1  # retryable: stays 1
    assert exit_code_for(0, msg("GateFailed: stale message")) == 0


def test_launch_runs_the_command_and_maps_its_failure(tmp_path: Path) -> None:
    log = tmp_path / "termination"
    worker = (
        f"import json, pathlib, sys; pathlib.Path({str(log)!r}).write_text("
        "json.dumps({'reason': 'GateFailed: accuracy 0.2 < 0.9'})); sys.exit(1)"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "kubetune.cli", "launch", "--", sys.executable, "-c", worker],
        env={"KUBETUNE_TERMINATION_LOG": str(log), "PATH": "/usr/bin:/bin"},
        capture_output=True,
    )
    assert proc.returncode == exitcodes.GATE_FAILED, proc.stderr
