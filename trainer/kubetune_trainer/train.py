"""The training loop. `setup()` builds everything, `train()` reads top to bottom.

Speed options are one flag each in TrainingSpec, applied by one named function each, and a no-op
when off, so the loop itself has no branches for them:
  precision        -> autocast_context()     bf16 autocast (GPU default); fp32 on CPU (bf16 is slow there)
  compile          -> maybe_compile()        torch.compile; pays off after warm-up on long GPU runs
  (CUDA)           -> build_optimizer()      fused AdamW: one kernel for all params instead of a loop
  gradientAccumulation -> train_step()       several micro-batches per optimizer step, exact token mean
  gradientCheckpointing -> maybe_gradient_checkpointing()  less activation memory, ~30% more compute
  packing          -> batches.packed_batch() no pad tokens at all (causal-lm)

Several processes (torchrun: GPUs x nodes): start_processes() returns accelerate's Accelerator, which
joins the process group torchrun set up (nccl on GPUs, gloo on CPU) and wraps the model in DDP; one
process gets SingleProcess, its no-op stand-in, so the loop is the same code either way:
  data      every rank builds the same (seed, epoch) plan and takes its share (batches.epoch_batches):
            W ranks x batchSize step like one process with W x batchSize, the same steps and rows
  gradients all-reduced by DDP once per optimizer step (no_sync on the other micro-batches); the loss
            is divided by the token/row count summed over ranks, so the gradient is the exact mean
  writing   only rank 0 logs step events and writes checkpoints (every rank agrees on stopping)
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from kubetune.api.finetunejob import TaskType, TrainingSpec
from kubetune_trainer.batches import (
    IGNORE,
    Tokenized,
    count_targets,
    epoch_batches,
    packed_batch,
    padded_batch,
)
from kubetune_trainer.checkpoint import Progress, save_checkpoint
from kubetune_trainer.errors import ModelLoadError, StoppedError
from kubetune_trainer.logs import EventLog


class StopRequest:
    """SIGTERM (preemption, eviction, kubectl delete). Inside the training loop (`armed`): finish the
    step, checkpoint, exit 143. Anywhere else nothing is lost by stopping at once: StoppedError."""

    def __init__(self) -> None:
        self.requested = False
        self.armed = False

    def install(self) -> StopRequest:
        signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if not self.armed:
            raise StoppedError("stopped by SIGTERM outside the training loop (nothing to checkpoint)")
        self.requested = True


class SingleProcess:
    """The no-op stand-in for accelerate.Accelerator when not launched by torchrun (rank 0 of 1)."""

    process_index, num_processes, is_main_process = 0, 1, True

    def __init__(self) -> None:
        self.device = pick_device()

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def reduce(self, tensor: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
        return tensor

    def no_sync(self, model: torch.nn.Module) -> AbstractContextManager[Any]:
        return nullcontext()

    def wait_for_everyone(self) -> None:
        pass


def start_processes() -> Any:
    """accelerate's Accelerator under torchrun (WORLD_SIZE > 1), else SingleProcess."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import Accelerator

        # cpu=True is how accelerate picks gloo for CPU-only ranks; with CUDA it uses nccl, one GPU each
        return Accelerator(cpu=not torch.cuda.is_available())
    return SingleProcess()


def broadcast_from_main(processes: Any, value: Any) -> Any:
    """Rank 0's value on every rank (e.g. which checkpoint to resume from)."""
    if processes.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value], from_process=0)[0]


@dataclass
class TrainSetup:
    model: torch.nn.Module  # the peft model (checkpoints and artifacts use its parameter names)
    forward: Callable[..., Any]  # what the loop calls: the model, maybe DDP-wrapped, maybe compiled
    processes: Any  # Accelerator or SingleProcess
    ddp: torch.nn.Module  # the model as prepared by `processes` (DDP when distributed)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    autocast: Callable[[], AbstractContextManager[Any]]
    seqs: list[Tokenized]
    pad_id: int
    training: TrainingSpec
    task: TaskType
    device: torch.device
    batches_per_epoch: int
    total_steps: int


# ---------------------------------------------------------------- setup, one function per piece


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_context(precision: str, device: torch.device) -> Callable[[], AbstractContextManager[Any]]:
    """Weights stay fp32 (LoRA needs the precision), matmuls run in bf16/fp16 under autocast."""
    cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if precision == "fp16" and device.type != "cuda":
        raise ModelLoadError("training.precision fp16 needs a CUDA GPU; use bf16 or fp32 here")
    dtype = {
        "bf16": torch.bfloat16,
        "fp16": torch.float16,
        "auto": torch.bfloat16 if cuda_bf16 else None,
    }.get(precision)
    if dtype is None:
        return nullcontext
    return partial(torch.autocast, device_type=device.type, dtype=dtype)


def maybe_compile(model: torch.nn.Module, enabled: bool) -> Callable[..., Any]:
    """dynamic=True: padded and packed batches change length every step; one graph serves them all."""
    return torch.compile(model, dynamic=True) if enabled else model


def maybe_gradient_checkpointing(model: Any, enabled: bool) -> None:
    if enabled:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def build_optimizer(
    model: torch.nn.Module, training: TrainingSpec, device: torch.device
) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(
        params, lr=training.learning_rate, weight_decay=training.weight_decay, fused=device.type == "cuda"
    )


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float) -> Any:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    warmup = max(1, round(warmup_ratio * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def count_total_steps(batches_per_epoch: int, training: TrainingSpec) -> int:
    if training.max_steps is not None:
        return training.max_steps
    assert training.epochs is not None
    return max(1, math.ceil(training.epochs * batches_per_epoch / training.gradient_accumulation))


def setup(
    model: torch.nn.Module,
    seqs: list[Tokenized],
    pad_id: int,
    training: TrainingSpec,
    task: TaskType,
    processes: Any = None,
) -> TrainSetup:
    """Everything the loop needs. Under DDP, wrapping copies rank 0's weights to every rank, so what
    rank 0 did to the model before (e.g. the LP-FT head) holds everywhere."""
    processes = processes or SingleProcess()
    device = processes.device
    model.to(device)
    maybe_gradient_checkpointing(model, training.gradient_checkpointing)
    per_epoch = len(
        epoch_batches(
            seqs,
            training.seed,
            0,
            training.batch_size,
            training.max_seq_length,
            training.packing,
            processes.process_index,
            processes.num_processes,
        )
    )
    total = count_total_steps(per_epoch, training)
    optimizer = build_optimizer(model, training, device)
    ddp = processes.prepare_model(model)
    return TrainSetup(
        model=model,
        forward=maybe_compile(ddp, training.compile),
        processes=processes,
        ddp=ddp,
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, total, training.warmup_ratio),
        scaler=torch.amp.GradScaler(device.type, enabled=training.precision == "fp16"),
        autocast=autocast_context(training.precision, device),
        seqs=seqs,
        pad_id=pad_id,
        training=training,
        task=task,
        device=device,
        batches_per_epoch=per_epoch,
        total_steps=total,
    )


# ---------------------------------------------------------------- the loop


@dataclass(frozen=True)
class MicroBatch:
    ids: list[int]
    epoch_position: float
    next_epoch: int
    next_index: int


def micro_batches(s: TrainSetup, epoch: int, index: int) -> Iterator[MicroBatch]:
    """Micro-batches from a saved data position onwards, epoch after epoch."""
    t = s.training
    while True:
        plan = epoch_batches(
            s.seqs,
            t.seed,
            epoch,
            t.batch_size,
            t.max_seq_length,
            t.packing,
            s.processes.process_index,
            s.processes.num_processes,
        )
        for i in range(index, len(plan)):
            last = i + 1 == len(plan)
            yield MicroBatch(plan[i], epoch + (i + 1) / len(plan), epoch + last, 0 if last else i + 1)
        epoch, index = epoch + 1, 0


def to_tensors(s: TrainSetup, ids: list[int]) -> dict[str, torch.Tensor]:
    batch = packed_batch(s.seqs, ids) if s.training.packing else padded_batch(s.seqs, ids, s.pad_id)
    return {k: v.to(s.device) for k, v in batch.items()}


def loss_sum(forward: Callable[..., Any], batch: dict[str, torch.Tensor], task: TaskType) -> torch.Tensor:
    """Summed (not averaged) loss, so micro-batches of different sizes add up to an exact mean."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    labels = batch["labels"]
    if task == "sequence-classification":
        return F.cross_entropy(forward(**inputs).logits.float(), labels, reduction="sum")
    logits = forward(**inputs, use_cache=False).logits[:, :-1].float()
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1), ignore_index=IGNORE, reduction="sum"
    )


def sum_over_ranks(s: TrainSetup, *values: float) -> list[float]:
    """Each value summed over every rank (one small all-reduce; the values themselves with one process)."""
    total = s.processes.reduce(torch.tensor(values, dtype=torch.float64, device=s.device), reduction="sum")
    return [float(v) for v in total.tolist()]


def train_step(s: TrainSetup, group: list[MicroBatch]) -> float:
    """One optimizer step over gradient-accumulation micro-batches; returns the mean loss (all ranks).

    DDP averages gradients over ranks, so each rank's summed loss is scaled by world / global items:
    the all-reduced gradient is then the exact mean over every row or answer token of the step."""
    batches = [to_tensors(s, mb.ids) for mb in group]
    world = s.processes.num_processes
    (items,) = sum_over_ranks(s, sum(count_targets(b) for b in batches))
    items = max(1.0, items)
    total = 0.0
    for i, batch in enumerate(batches):
        last = i + 1 == len(batches)
        with s.autocast(), nullcontext() if last else s.processes.no_sync(s.ddp):
            loss = loss_sum(s.forward, batch, s.task) * (world / items)
            s.scaler.scale(loss).backward()
        total += loss.item() / world
    s.scaler.unscale_(s.optimizer)
    torch.nn.utils.clip_grad_norm_([p for p in s.model.parameters() if p.requires_grad], 1.0)
    s.scaler.step(s.optimizer)
    s.scaler.update()
    s.optimizer.zero_grad(set_to_none=True)
    s.scheduler.step()
    return total


def train(s: TrainSetup, progress: Progress, log: EventLog, output_dir: Path, stop: StopRequest) -> bool:
    """Train from `progress` to total_steps; False when stopped early by SIGTERM (after a checkpoint)."""
    s.model.train()
    stop.armed = True
    try:
        return _train_steps(s, progress, log, output_dir, stop)
    finally:
        stop.armed = False


def _train_steps(
    s: TrainSetup, progress: Progress, log: EventLog, output_dir: Path, stop: StopRequest
) -> bool:
    stream = micro_batches(s, progress.epoch, progress.batch_index)
    started, first_step = time.monotonic(), progress.step
    while progress.step < s.total_steps:
        group = [next(stream) for _ in range(s.training.gradient_accumulation)]
        lr = s.scheduler.get_last_lr()[0]
        loss, stops = sum_over_ranks(s, train_step(s, group), float(stop.requested))
        stop.requested = stops > 0  # a SIGTERM seen by any rank stops all of them at the same step
        progress.step += 1
        progress.epoch, progress.batch_index = group[-1].next_epoch, group[-1].next_index
        progress.losses.append(loss)
        per_step = (time.monotonic() - started) / (progress.step - first_step)
        log.step(
            progress.step,
            s.total_steps,
            loss,
            lr,
            per_step * (s.total_steps - progress.step),
            group[-1].epoch_position,
            [i for mb in group for i in mb.ids],
        )
        last = progress.step == s.total_steps
        if s.processes.is_main_process and (
            stop.requested or last or progress.step % s.training.checkpoint_every == 0
        ):
            path = save_checkpoint(output_dir, s.model, s.optimizer, s.scheduler, progress)
            log.checkpoint(progress.step, str(path))
        if stop.requested and not last:
            return False
    return True
