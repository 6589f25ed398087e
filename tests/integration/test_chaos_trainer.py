"""Chaos for the trainer: SIGKILL (no SIGTERM, no grace: the OOM killer, a lost node) of a real
`kubetune train` (MiniLM, a few CPU steps) mid-step and in the middle of a checkpoint write. The next
run resumes from the newest *complete* checkpoint, loses at most one checkpoint interval, never reads
the half-written one, and replays exactly the batches the killed run had trained past it.

The kill step is seeded (KUBETUNE_CHAOS_SEED, default 11). A checkpoint write takes milliseconds, so
to land a kill inside one deterministically the second test runs the real CLI behind a tiny shim
that stalls torch.save half-way through the trainer state file of one chosen step (the seam: the
weights are on disk, the state file is half written, the temp directory not yet renamed).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from test_trainer_minilm import LABELS, write_manifest

SEED = int(os.environ.get("KUBETUNE_CHAOS_SEED", "11"))
PHRASES = {
    "billing_refund": ["I was charged twice, please refund me", "refund order {n} please"],
    "card_lost_stolen": ["I lost my card yesterday", "card {n} was stolen, block it"],
    "shipping_delay": ["my parcel is late", "order {n} has not arrived yet"],
}
STEPS, EVERY = 10, 3
STALL_SHIM = """
import io, json, os, runpy, sys, time
import torch
real_save, stall = torch.save, os.environ["CHAOS_STALL_STEP"]
def save(obj, f, *args, **kwargs):
    if f"/.tmp-step-{stall}-" in str(f):
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        with open(f, "wb") as out:
            out.write(data[: len(data) // 2])
        print(json.dumps({"event": "chaos-stalled", "path": str(f)}), flush=True)
        time.sleep(600)
    return real_save(obj, f, *args, **kwargs)
torch.save = save
sys.argv = ["kubetune", *sys.argv[1:]]
runpy.run_module("kubetune.cli", run_name="__main__")
"""


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    data = tmp_path / "data" / "tiny"
    data.mkdir(parents=True)
    rows = [
        {"text": PHRASES[label][i % 2].format(n=100 + i), "label": label}
        for i in range(8)
        for label in LABELS
    ]
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (data / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:6]))
    write_manifest(
        tmp_path / "job.yaml",
        maxSteps=STEPS,
        checkpointEvery=EVERY,
        evaluation={"maxSamples": 6, "baseline": False},
    )
    return tmp_path


def train_cmd(workspace: Path, shim: bool = False) -> list[str]:
    args = [
        "train",
        "-f",
        str(workspace / "job.yaml"),
        "--pvc",
        f"data={workspace / 'data'}",
        "--pvc",
        f"out={workspace / 'out'}",
        "--log-format",
        "json",
        "--cache-dir",
        str(workspace / "cache"),
    ]
    return (
        [sys.executable, "-c", STALL_SHIM, *args] if shim else [sys.executable, "-m", "kubetune.cli", *args]
    )


def start(workspace: Path, shim: bool = False, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        train_cmd(workspace, shim),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "KUBETUNE_TERMINATION_LOG": str(workspace / "termination"), **env},
    )


def parse(lines: list[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines if line.startswith("{")]


def run_until(proc: subprocess.Popen[str], stop: str, timeout: float = 240) -> list[dict[str, Any]]:
    """Read its JSON log until a line containing ``stop``; then SIGKILL it. Everything it logged."""
    assert proc.stdout is not None
    deadline, lines = time.monotonic() + timeout, []
    for line in proc.stdout:
        lines.append(line)
        if stop in line:
            proc.send_signal(signal.SIGKILL)
            break
        assert time.monotonic() < deadline, "".join(lines)[-2000:]
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "".join(lines)[-3000:]
    return parse(lines)


def finish(workspace: Path) -> list[dict[str, Any]]:
    proc = start(workspace)
    stdout, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, stdout[-3000:]
    return parse(stdout.splitlines())


def checkpoints(workspace: Path) -> list[str]:
    return sorted(p.name for p in (workspace / "out" / "tiny" / "checkpoints").iterdir())


def steps(log: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {e["step"]: e for e in log if e["event"] == "step"}


def assert_replayed(
    killed: dict[int, dict[str, Any]], resumed: dict[int, dict[str, Any]], start: int
) -> None:
    """The resumed run trained every step after ``start`` once, the lost ones on the same batches."""
    assert sorted(resumed) == list(range(start + 1, STEPS + 1)), sorted(resumed)
    for step in set(killed) & set(resumed):
        assert resumed[step]["batchIds"] == killed[step]["batchIds"], step
        assert resumed[step]["loss"] == pytest.approx(killed[step]["loss"], rel=1e-4), step


def test_sigkill_mid_step_resumes_from_the_newest_checkpoint(workspace: Path) -> None:
    rng = random.Random(SEED)
    kill_after = rng.choice([s for s in range(EVERY + 1, STEPS) if s % EVERY])  # never on a checkpoint step
    print(f"KUBETUNE_CHAOS_SEED={SEED}: SIGKILL after step {kill_after}")
    killed = run_until(start(workspace), f'"event":"step","step":{kill_after},')
    newest = kill_after // EVERY * EVERY
    assert [e["step"] for e in killed if e["event"] == "checkpoint"] == list(range(EVERY, newest + 1, EVERY))

    resumed = finish(workspace)
    assert [(e["event"], e["step"]) for e in resumed if e["event"] == "resume"] == [("resume", newest)]
    assert kill_after - newest < EVERY  # at most one checkpoint interval lost
    assert_replayed(steps(killed), steps(resumed), newest)
    assert (workspace / "out" / "tiny" / "adapter" / "adapter_model.safetensors").stat().st_size > 0


def test_sigkill_mid_checkpoint_write_never_uses_the_half_written_one(workspace: Path) -> None:
    rng = random.Random(SEED)
    stall = rng.choice(range(2 * EVERY, STEPS, EVERY))  # a checkpoint step with a complete one before it
    print(f"KUBETUNE_CHAOS_SEED={SEED}: SIGKILL inside the write of checkpoint step-{stall}")
    killed = run_until(start(workspace, shim=True, CHAOS_STALL_STEP=str(stall)), '"event": "chaos-stalled"')
    half = Path(next(e["path"] for e in killed if e["event"] == "chaos-stalled"))
    assert half.parent.name.startswith(f".tmp-step-{stall}-") and half.exists()
    assert (half.parent / "trainable.safetensors").exists()  # weights written, state cut off
    previous = stall - EVERY
    on_disk = checkpoints(workspace)
    assert f"step-{stall}" not in on_disk and f"step-{previous}" in on_disk, on_disk

    resumed = finish(workspace)
    resume = [e for e in resumed if e["event"] == "resume"]
    assert [e["step"] for e in resume] == [previous], resume
    assert Path(resume[0]["checkpoint"]).name == f"step-{previous}"
    assert_replayed(steps(killed), steps(resumed), previous)
    # The resumed run wrote step-<stall> afresh (under a temp name of its own: it restored the killed
    # run's RNG state, so a name drawn from `random` would collide) and swept the half-written one.
    assert f"step-{stall}" in checkpoints(workspace)
    assert not half.parent.exists()
    assert not [name for name in checkpoints(workspace) if name.startswith(".tmp-")]
