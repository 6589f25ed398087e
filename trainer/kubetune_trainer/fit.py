"""Fit one candidate of training.recipe (recipes.py) and score it: the part of a run that repeats
once per candidate under `recipe: auto`, and runs once otherwise.

Each candidate resumes from its own checkpoints: <output>/checkpoints for a single recipe (as
before recipes existed), <output>/candidates/<recipe>/checkpoints under auto. A finished candidate
keeps its last checkpoint, so a preempted auto run re-scores it from there instead of retraining.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune.api.finetunejob import Recipe
from kubetune.api.trainconfig import TrainConfig
from kubetune_trainer import evaluate
from kubetune_trainer.batches import Tokenized
from kubetune_trainer.checkpoint import Progress, list_checkpoints, load_checkpoint
from kubetune_trainer.closed_set import AnswerSchema
from kubetune_trainer.data import Example
from kubetune_trainer.logs import EventLog
from kubetune_trainer.models import apply_lora, init_head_from_probe
from kubetune_trainer.recipes import training_for
from kubetune_trainer.train import broadcast_from_main, setup, train


class Preempted(Exception):
    """SIGTERM inside a candidate's training loop; its checkpoint is written."""

    def __init__(self, step: int, total: int) -> None:
        super().__init__(f"stopped by SIGTERM, checkpoint at step {step} of {total}")


@dataclass
class RunContext:
    """What every candidate of one run shares."""

    config: TrainConfig
    labels: list[str]
    tokenizer: Any
    train_seqs: list[Tokenized]
    val_examples: list[Example]
    val_seqs: list[Tokenized]
    processes: Any
    log: EventLog
    stop: Any
    out: Path
    pooling: str
    answer_schema: AnswerSchema | None = None  # causal-lm with closed-set answers (closed_set.py)

    @property
    def main(self) -> bool:
        return bool(self.processes.is_main_process)

    def score(self, model: Any, stage: str) -> evaluate.Evaluation:
        if self.config.task.type == "sequence-classification":
            result = evaluate.evaluate_classifier(
                model, self.val_seqs, self.labels, self.tokenizer.pad_token_id, self.processes.device
            )
            correct = [
                self.labels[s.labels] == p for s, p in zip(self.val_seqs, result.predicted, strict=True)
            ]
            languages = [getattr(e, "language", None) for e in self.val_examples]
            result.metrics |= evaluate.accuracy_per_language(correct, languages)
        else:
            result = evaluate.evaluate_causal(
                model,
                self.tokenizer,
                self.val_examples,
                self.val_seqs,
                self.processes.device,
                self.answer_schema,
            )
        self.log.eval(stage, result.metrics)
        return result

    def checkpoint_dir(self, recipe: Recipe, several: bool) -> Path:
        return self.out / "candidates" / recipe if several else self.out

    def resume_from(self, folder: Path) -> str | None:
        """Rank 0's newest checkpoint under `folder`, on every rank (the output location is shared)."""
        newest = list_checkpoints(folder)[-1:] if self.main else []
        found: str | None = broadcast_from_main(self.processes, str(newest[0]) if newest else None)
        return found


@dataclass
class Fitted:
    recipe: Recipe
    model: Any  # the peft model (an adapter named "default")
    progress: Progress
    after: evaluate.Evaluation | None  # None on ranks other than 0
    seconds: float


def fit(
    ctx: RunContext,
    recipe: Recipe,
    base: Any,
    probe: evaluate.Probe | None,
    start: Progress,
    checkpoints: Path,
    stage: str,
) -> Fitted:
    """Wrap `base` for `recipe`, start the head from the probe (LP-FT), train unless it is the
    probe, and score it on the validation rows as `stage`."""
    config = ctx.config
    model = apply_lora(base, config, full_rank=recipe == "full")
    model.to(ctx.processes.device)
    checkpoint = None if recipe == "probe" else ctx.resume_from(checkpoints)
    progress = Progress(before=dict(start.before), baseline=dict(start.baseline))
    if checkpoint is None and ctx.main and probe is not None and ctx.pooling == "mean":
        init_head_from_probe(model, probe.coef, probe.intercept, probe.classes)
        ctx.log.emit("head", init="linear-probe", pooling=ctx.pooling, recipe=recipe)
    started = time.monotonic()
    if recipe != "probe":
        training = training_for(recipe, config.training)
        run = setup(
            model, ctx.train_seqs, ctx.tokenizer.pad_token_id, training, config.task.type, ctx.processes
        )
        if checkpoint is not None:
            progress = load_checkpoint(Path(checkpoint), model, run.optimizer, run.scheduler)
            ctx.log.emit("resume", step=progress.step, checkpoint=checkpoint, recipe=recipe)
            ctx.log.say(f"resuming {recipe} from {checkpoint} (step {progress.step}/{run.total_steps})")
        ctx.log.phase("Training")
        if not train(run, progress, ctx.log, checkpoints, ctx.stop):
            raise Preempted(progress.step, run.total_steps)
    seconds = time.monotonic() - started
    if ctx.main:
        ctx.log.phase("Evaluating")
    after = ctx.score(model, stage) if ctx.main else None
    return Fitted(recipe, model, progress, after, seconds)


def linear_probe(ctx: RunContext, base: Any) -> evaluate.Probe:
    """The frozen-embedding logistic regression: the baseline, the probe recipe and the LP-FT head."""
    import numpy as np

    pad, device = ctx.tokenizer.pad_token_id, ctx.processes.device
    _, train_emb = evaluate.classify(base, ctx.train_seqs, pad, device)
    _, val_emb = evaluate.classify(base, ctx.val_seqs, pad, device)
    return evaluate.linear_probe(
        train_emb,
        np.array([s.labels for s in ctx.train_seqs]),
        val_emb,
        np.array([s.labels for s in ctx.val_seqs]),
        len(ctx.labels),
    )
