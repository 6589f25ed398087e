"""The heads arm checkpoints and resumes (heads_checkpoint.py): a run stopped by SIGTERM mid-epoch and
resumed from its checkpoint gives the same losses, step for step, and the same weights as one never
stopped. A tiny Llama with LoRA (dropout on, so the RNG state matters too), no real model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from kubetune_trainer import decoder_heads as dh
from kubetune_trainer.checkpoint import Progress, list_checkpoints
from kubetune_trainer.fit import Preempted
from kubetune_trainer.heads_checkpoint import HeadsCheckpoints, train_with_checkpoints
from kubetune_trainer.train import StopRequest
from peft import LoraConfig, get_peft_model
from test_decoder_heads import SCHEMA, rows, tiny_llama

# 24 rows in batches of 5: 5 steps an epoch, the last one short; 12 steps cross two epoch boundaries.
TRAINING = dh.HeadsTraining(steps=12, batch_size=5, learning_rate=1e-2, warmup_ratio=0.2, seed=7)
START = Progress(before={"intent_exact_match": 0.1}, baseline={"intent_exact_match": 0.5})


def fresh_model() -> tuple[dh.FieldHeads, list[torch.Tensor], list]:
    """The same initial model every call: LoRA (dropout on) on the top layer, heads from probes."""
    ids, targets = rows()
    decoder = get_peft_model(
        tiny_llama(layers=2),
        LoraConfig(
            r=4, lora_alpha=8, lora_dropout=0.2, target_modules=["q_proj", "v_proj"], layers_to_transform=[1]
        ),
    )
    model = dh.FieldHeads(decoder, SCHEMA, "mean")
    cached, pooled, _ = dh.trunk_inputs(model, ids, 0, 1)
    dh.init_from_probes(model, pooled, targets)
    return model, cached, targets


def run(folder: Path, stop_after: int | None = None) -> tuple[list[float], Progress, dict[str, torch.Tensor]]:
    torch.manual_seed(123)
    model, cached, targets = fresh_model()
    stop = StopRequest()

    def on_step(step: int, total: int, loss: float, lr: float) -> None:
        stop.requested = step == stop_after  # SIGTERM arrives during this step

    hook = HeadsCheckpoints(folder, every=4, stop=stop, start=START)
    losses, progress = train_with_checkpoints(model, cached, 1, targets, TRAINING, on_step, hook)
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return losses, progress, trained


def test_a_resumed_run_trains_exactly_as_one_never_stopped(tmp_path: Path) -> None:
    whole, whole_progress, whole_weights = run(tmp_path / "whole")
    assert len(whole) == TRAINING.steps and whole_progress.step == TRAINING.steps
    assert [p.name for p in list_checkpoints(tmp_path / "whole")] == ["step-8", "step-12"]

    with pytest.raises(Preempted, match="checkpoint at step 7 of 12"):
        run(tmp_path / "stopped", stop_after=7)  # mid-epoch, after the periodic checkpoint at 4
    assert [p.name for p in list_checkpoints(tmp_path / "stopped")] == ["step-4", "step-7"]

    # a new pod: fresh process state, a new model from the same start, the same folder
    torch.manual_seed(999)
    resumed, progress, weights = run(tmp_path / "stopped")
    assert resumed == whole  # steps 1-7 restored from the checkpoint, 8-12 trained again
    assert progress.step == TRAINING.steps and progress.before == START.before
    assert progress.baseline == START.baseline
    assert weights.keys() == whole_weights.keys()
    assert all(torch.equal(weights[n], whole_weights[n]) for n in weights)


def test_without_a_checkpoint_the_hook_changes_nothing(tmp_path: Path) -> None:
    torch.manual_seed(123)
    model, cached, targets = fresh_model()
    plain = dh.train_heads(model, cached, 1, targets, TRAINING)
    hooked, _, _ = run(tmp_path)
    assert hooked == plain
