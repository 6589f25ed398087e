"""Checkpoints for the heads arm (decoder_heads.train_heads), so a preempted pod resumes heads training
where it stopped instead of from scratch, exactly as the LoRA arm does (train.py + checkpoint.py).

The layout is checkpoint.py's (<folder>/checkpoints/step-N, written atomically, the last KEEP kept):
the trainable weights (LoRA on the top layers + the heads), AdamW, the LR schedule, the global RNG
states (LoRA dropout), the losses so far and the before/baseline metrics (Progress), plus what only
this loop has: its data-order generator and the order of the epoch in progress (save_checkpoint's
`extra`). A checkpoint is written every training.checkpointEvery steps, after the last step, and on
SIGTERM (StopRequest), after which Preempted is raised, as fit() does for the LoRA arm.

    losses, progress = train_with_checkpoints(model, cached, first, targets, training, on_step,
                                              HeadsCheckpoints(folder, every, stop, start))

train_heads calls the hook twice: `resume` once before its first step (returns the step to start
from and the epoch's order) and `after_step` at the end of each step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kubetune_trainer import decoder_heads as dh
from kubetune_trainer.checkpoint import (
    Progress,
    checkpoint_extra,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)

GENERATOR, ORDER = "heads_generator", "heads_order"


@dataclass
class HeadsCheckpoints:
    """The hook train_heads takes as `checkpoints`. `start` carries the before/baseline metrics into
    each checkpoint; `progress` is where training stands (restored ones included) once it ran."""

    folder: Path
    every: int
    stop: Any = None  # train.StopRequest: SIGTERM seen -> checkpoint, then Preempted
    start: Progress = field(default_factory=Progress)
    main: bool = True  # only rank 0 writes
    log: Any = None  # logs.EventLog: a "checkpoint" event per checkpoint written, "resume" on resume
    progress: Progress = field(init=False)

    def __post_init__(self) -> None:
        self.progress = Progress(before=dict(self.start.before), baseline=dict(self.start.baseline))

    def resume(
        self,
        model: torch.nn.Module,
        optimizer: Any,
        scheduler: Any,
        generator: torch.Generator,
        losses: list[float],
        order: torch.Tensor,
    ) -> tuple[int, torch.Tensor]:
        """Restore the newest checkpoint under `folder` into the loop's state, in place; (0, order)
        when there is none."""
        newest = list_checkpoints(self.folder)[-1:]
        if not newest:
            return 0, order
        self.progress = load_checkpoint(newest[0], model, optimizer, scheduler)
        extra = checkpoint_extra(newest[0])
        generator.set_state(extra[GENERATOR])
        losses[:] = self.progress.losses
        if self.log is not None:
            self.log.emit("resume", step=self.progress.step, checkpoint=str(newest[0]), recipe="heads")
        return self.progress.step, extra[ORDER]

    def after_step(
        self,
        step: int,
        total: int,
        model: torch.nn.Module,
        optimizer: Any,
        scheduler: Any,
        generator: torch.Generator,
        order: torch.Tensor,
        losses: Sequence[float],
    ) -> None:
        """Checkpoint when due; Preempted (from fit) after the checkpoint when SIGTERM was seen."""
        from kubetune_trainer.fit import Preempted

        stopping = bool(self.stop is not None and self.stop.requested)
        self.progress.step, self.progress.losses = step, list(losses)
        if self.main and (stopping or step == total or step % self.every == 0):
            extra = {GENERATOR: generator.get_state(), ORDER: order.clone()}
            path = save_checkpoint(self.folder, model, optimizer, scheduler, self.progress, extra)
            if self.log is not None:
                self.log.checkpoint(step, str(path))
        if stopping and step < total:
            raise Preempted(step, total)


def train_with_checkpoints(
    model: dh.FieldHeads,
    cached: Sequence[torch.Tensor],
    first: int,
    targets: Sequence[np.ndarray],
    training: dh.HeadsTraining,
    on_step: Any,
    checkpoints: HeadsCheckpoints,
    below: torch.Tensor | None = None,
) -> tuple[list[float], Progress]:
    """train_heads resuming from and writing `checkpoints`, with SIGTERM armed (finish the step,
    checkpoint, Preempted) while it runs; the losses of every step (restored ones first) and the
    final Progress (its before/baseline are the checkpoint's on a resumed run)."""
    stop = checkpoints.stop
    if stop is not None:
        stop.armed = True
    try:
        losses = dh.train_heads(
            model, cached, first, targets, training, on_step, checkpoints=checkpoints, below=below
        )
    finally:
        if stop is not None:
            stop.armed = False
    return losses, checkpoints.progress
