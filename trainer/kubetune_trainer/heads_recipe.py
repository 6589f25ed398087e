r"""The heads arm of training.recipe on a causal-lm job with closed-set answers (decoder_heads.py), and
how every arm of such a job is chosen: on rows held out of train, never on the validation rows.

    train rows --split (seeded, SELECTION_FRACTION)--> fit rows   every arm trains on these
                                                    \-> select rows  every arm is scored here; the best
                                                                     mean field accuracy wins
    validation rows: scored for every arm and reported, never used to choose
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kubetune_trainer import decoder_heads as dh
from kubetune_trainer.checkpoint import Progress
from kubetune_trainer.closed_set import AnswerSchema, answer_of, field_accuracy
from kubetune_trainer.data import Example, split_train_validation
from kubetune_trainer.evaluate import Evaluation, prompt_and_reference
from kubetune_trainer.heads_checkpoint import HeadsCheckpoints, train_with_checkpoints

SELECTION_FRACTION = 0.2
# "answer": the prompt's mean beside the state where the first value would be written (decoder_heads.pool;
# cross-validated frozen probes and LP-FT on held-out train tickets: benchmarks/TRIAGE_HEADS_RESULTS.md).
DEFAULT_POOLING: dh.Pooling = "answer"
# LoRA on the last layers only: the frozen trunk below runs once per row, not once per step, so an
# epoch costs about 3 x TOP_LAYERS / layers of a forward pass (30-layer SmolLM2-135M: 0.6).
TOP_LAYERS = 6
READ_FOLDS = 5


def selection_split(train: Sequence[Example], seed: int) -> tuple[list[Example], list[Example]]:
    """(fit rows, select rows): the same seeded shuffle as a validation split of train."""
    return split_train_validation(list(train), SELECTION_FRACTION, seed + 1)


def selection_score(metrics: Mapping[str, float], schema: AnswerSchema) -> float:
    """What chooses the winner: the mean of the per-field accuracies (every field counts alike).

    >>> from kubetune_trainer.closed_set import AnswerField
    >>> s = AnswerSchema("json", (AnswerField("a", ("x",)), AnswerField("b", ("y",))))
    >>> selection_score({"a_exact_match": 1.0, "b_exact_match": 0.5}, s)
    0.75
    """
    return float(np.mean([metrics.get(m, 0.0) for m in schema.metrics]))


def pick_arm(scores: Mapping[str, Mapping[str, float]], schema: AnswerSchema, order: Sequence[str]) -> str:
    """The arm with the best selection_score on the select rows; a tie goes to the earlier in `order`.

    >>> from kubetune_trainer.closed_set import AnswerField
    >>> s = AnswerSchema("json", (AnswerField("a", ("x",)),))
    >>> pick_arm({"lora": {"a_exact_match": 0.9}, "heads": {"a_exact_match": 0.9}}, s, ["heads", "lora"])
    'heads'
    """
    if not scores:
        raise ValueError("no arm was trained")
    return min(scores, key=lambda arm: (-selection_score(scores[arm], schema), list(order).index(arm)))


def prompt_ids(tokenizer: Any, examples: Sequence[Example]) -> list[list[int]]:
    """Each example's prompt as evaluation and the server render it (evaluate.prompt_and_reference)."""
    return dh.token_ids(tokenizer, [prompt_and_reference(e, tokenizer)[0] for e in examples])


def answer_lead(tokenizer: Any, schema: AnswerSchema) -> list[int]:
    """The token ids of the schema's answer lead ("answer" pooling reads the state at its end)."""
    lead = schema.lead()
    return dh.token_ids(tokenizer, [lead])[0] if lead else []


def heads_evaluation(model: dh.FieldHeads, tokenizer: Any, examples: Sequence[Example]) -> Evaluation:
    """The heads arm scored like closed-set answers are (field_accuracy), with the drift reference."""
    ids = prompt_ids(tokenizer, examples)
    answers, pooled = dh.predict_and_embed(model, ids, tokenizer.pad_token_id)
    schema = model.schema
    metrics = field_accuracy(schema, [a.values for a in answers], [answer_of(e) for e in examples])
    if schema.kind == "json":
        metrics = {"json_validity": 1.0} | metrics  # valid by construction
    return Evaluation(
        metrics,
        None,
        [str(a.values[0]) for a in answers],
        [float(np.mean([max(p) for p in a.probabilities])) for a in answers],
        pooled,
        [len(i) for i in ids],
    )


def training_of(config: Any, rows: int) -> dh.HeadsTraining:
    """The job's optimisation settings; training.epochs counts passes over the fit rows."""
    t = config.training
    steps = t.max_steps if t.max_steps is not None else max(1, int(np.ceil(t.epochs * rows / t.batch_size)))
    return dh.HeadsTraining(int(steps), t.batch_size, t.learning_rate, t.warmup_ratio, t.seed)


def fit_heads(
    ctx: Any,
    base: Any,
    train: Sequence[Example],
    start: Progress,
    stage: str,
    pooling: dh.Pooling = DEFAULT_POOLING,
    checkpoints: Path | None = None,
) -> Any:
    """LoRA on the top TOP_LAYERS of the first `depth` decoder layers + one head per field reading
    layers depth-span..depth-1 (read_depth), the heads started from probes on the frozen base (LP-FT),
    trained on `train` from the frozen trunk's cached outputs, scored on the validation rows as
    `stage`; with `checkpoints` (a folder) it resumes from and writes checkpoints there, as the LoRA
    arm does. Returns fit.Fitted with `.heads` set."""
    from peft import LoraConfig, get_peft_model

    from kubetune_trainer.fit import Fitted
    from kubetune_trainer.models import resolve_target_modules

    schema: AnswerSchema = ctx.answer_schema
    config = ctx.config
    ids = prompt_ids(ctx.tokenizer, train)
    targets = dh.field_targets(schema, [answer_of(e) for e in train])
    lead = answer_lead(ctx.tokenizer, schema) if pooling == "answer" else []
    started = time.monotonic()
    (depth, span), by_reading = read_depth(
        base, ids, targets, ctx.tokenizer.pad_token_id, pooling, config.training.seed, lead
    )
    layers = dh.top_layers(base, TOP_LAYERS, depth)
    frozen = dh.FieldHeads(base, schema, pooling, depth, span, lead).to(ctx.processes.device)
    cached, pooled, below = dh.trunk_inputs(frozen, ids, ctx.tokenizer.pad_token_id, layers[0])
    dh.init_from_probes(frozen, pooled, targets)
    ctx.log.emit(
        "head",
        init="linear-probe",
        pooling=pooling,
        recipe="heads",
        depth=depth,
        span=span,
        readProbes={f"{d}/{n}": round(v, 4) for (d, n), v in by_reading.items()},
        loraLayers=len(layers),
    )
    lora = LoraConfig(
        r=config.lora.r,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        target_modules=resolve_target_modules(base, config.lora.target_modules),
        layers_to_transform=layers,
        task_type="CAUSAL_LM",
    )
    decoder = get_peft_model(base, lora)
    model = dh.FieldHeads(decoder, schema, pooling, depth, span, lead).to(ctx.processes.device)
    model.heads.load_state_dict(frozen.heads.state_dict())
    progress = Progress(before=dict(start.before), baseline=dict(start.baseline))

    def on_step(step: int, total: int, loss: float, lr: float) -> None:
        elapsed = time.monotonic() - started
        ctx.log.step(step, total, loss, lr, elapsed / step * (total - step), step / total, [])

    ctx.log.phase("Training")
    training = training_of(config, len(ids))
    if checkpoints is None:
        progress.losses = dh.train_heads(model, cached, layers[0], targets, training, on_step, below=below)
        progress.step = len(progress.losses)
    else:  # resumes from / writes <checkpoints>/checkpoints/step-N; a resumed run's before/baseline too
        hook = HeadsCheckpoints(
            checkpoints, config.training.checkpoint_every, ctx.stop, start, ctx.main, ctx.log
        )
        _, progress = train_with_checkpoints(
            model, cached, layers[0], targets, training, on_step, hook, below
        )
    seconds = time.monotonic() - started
    after = heads_evaluation(model, ctx.tokenizer, ctx.val_examples)
    ctx.log.eval(stage, after.metrics)
    fitted = Fitted("heads", decoder, progress, after, seconds)
    fitted.heads = model  # type: ignore[attr-defined]
    return fitted


def read_depth(
    base: Any,
    ids: Sequence[Sequence[int]],
    targets: Sequence[np.ndarray],
    pad_id: int,
    pooling: dh.Pooling,
    seed: int,
    lead: Sequence[int] = (),
) -> tuple[tuple[int, int], dict[tuple[int, int], float]]:
    """Which decoder layers the heads read: every (depth, span) of dh.read_candidates scored by a frozen
    probe cross-validated over these (training) rows (READ_FOLDS seeded folds: every row is held out
    once, steadier than one small split), the best wins. Returns ((depth, span), candidate -> score)."""
    total = len(dh.backbone(base).model.layers)
    candidates = dh.read_candidates(total)
    layers = sorted({k for d, span in candidates for k in range(d - span, d)})
    by_layer = dh.pooled_by_layer(base, ids, pad_id, pooling, layers, lead)
    scores = {
        (d, span): dh.cross_validated_accuracy(dh.read_features(by_layer, d, span), targets, READ_FOLDS, seed)
        for d, span in candidates
    }
    return dh.choose_reading(scores), scores


def held_out_metrics(ctx: Any, candidate: Any, rows: Sequence[Example]) -> dict[str, float]:
    """An arm's field accuracies on the select rows, each arm answering the way it is served."""
    from kubetune_trainer import evaluate
    from kubetune_trainer.batches import tokenize_examples

    heads = getattr(candidate, "heads", None)
    if heads is not None:
        return heads_evaluation(heads, ctx.tokenizer, rows).metrics
    seqs = tokenize_examples(list(rows), ctx.tokenizer, ctx.config.training.max_seq_length)
    return evaluate.evaluate_causal(
        candidate.model, ctx.tokenizer, list(rows), seqs, ctx.processes.device, ctx.answer_schema
    ).metrics


def write_heads(candidate: Any, folder: Any) -> bool:
    """Add the heads arm's heads.safetensors and kubetune.json "heads" to a written adapter folder;
    False (nothing written) for the other arms."""
    import json

    heads = getattr(candidate, "heads", None)
    if heads is None:
        return False
    entry = dh.save_heads(heads, folder)
    meta_file = folder / "kubetune.json"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps(meta | {"heads": entry}, indent=2) + "\n")
    return True
