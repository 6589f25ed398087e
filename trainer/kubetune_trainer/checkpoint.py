"""Checkpoints under <output>/checkpoints/step-N, written atomically, read back on restart.

A checkpoint is a directory written as `.tmp-step-N-<pid>-<random>` and renamed to `step-N` only when
every file is on disk, so a kill mid-write leaves the previous checkpoint the newest complete one (the
temp directory it leaves is removed by the next checkpoint written). The temp name must not come from
the seeded `random` module: a resumed run restores its state and would pick the very same name. It holds
what makes a resumed run continue exactly: trainable weights (LoRA + trained head), optimizer,
LR scheduler, RNG states and the data position (epoch, micro-batch index within that epoch's
deterministic order), plus the loss history and before-training metrics for the final report.
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

CHECKPOINTS = "checkpoints"
KEEP = 2
WEIGHTS = "trainable.safetensors"
STATE = "trainer_state.pt"


@dataclass
class Progress:
    """Where training stands; everything in it is saved in a checkpoint."""

    step: int = 0
    epoch: int = 0
    batch_index: int = 0  # next micro-batch of `epoch` to train on
    losses: list[float] = field(default_factory=list)
    before: dict[str, float] = field(default_factory=dict)  # metrics of the base model, adapter off
    baseline: dict[str, float] = field(default_factory=dict)  # linear probe on frozen embeddings


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def rng_states() -> dict[str, Any]:
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(
    output_dir: Path,
    model: torch.nn.Module,
    optimizer: Any,
    scheduler: Any,
    progress: Progress,
    extra: dict[str, Any] | None = None,
) -> Path:
    """`extra`: more loop state written in the same atomic step (heads_checkpoint.py: the data order
    and its generator), read back with checkpoint_extra."""
    root = output_dir / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{progress.step}"
    tmp = root / f".tmp-step-{progress.step}-{os.getpid()}-{os.urandom(4).hex()}"
    tmp.mkdir()
    save_file(trainable_state(model), str(tmp / WEIGHTS))
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rng_states(),
            "progress": asdict(progress),
            **({"extra": extra} if extra is not None else {}),
        },
        tmp / STATE,
    )
    if final.exists():  # the same step again (SIGTERM right after a periodic checkpoint)
        shutil.rmtree(final)
    tmp.rename(final)
    for old in list_checkpoints(output_dir)[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    for interrupted in root.glob(".tmp-step-*"):  # left by a run killed mid-write
        shutil.rmtree(interrupted, ignore_errors=True)
    return final


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temp dirs of interrupted writes are ignored)."""
    root = output_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.name.startswith("step-") and (p / STATE).exists()]
    return sorted(done, key=lambda p: int(p.name.removeprefix("step-")))


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: Any, scheduler: Any) -> Progress:
    weights = load_file(str(path / WEIGHTS))
    missing = set(weights) - {n for n, _ in model.named_parameters()}
    if missing:
        raise ValueError(f"{path}: checkpoint weights do not fit this model ({sorted(missing)[:3]} ...)")
    model.load_state_dict(weights, strict=False)
    state = torch.load(path / STATE, weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    restore_rng_states(state["rng"])
    return Progress(**state["progress"])


def checkpoint_extra(path: Path) -> dict[str, Any]:
    """What save_checkpoint's `extra` held ({} when none was given)."""
    extra: dict[str, Any] = torch.load(path / STATE, weights_only=False).get("extra", {})
    return extra
