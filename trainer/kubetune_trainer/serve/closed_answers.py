"""Closed-set answers at serving time: an adapter trained on closed-set answers (kubetune.json
"answerSchema") answers by choosing among the allowed values with closed_set.choose_answer, the very
function its evaluation scored it with, on the same prompt ids; the answer is complete at once (no
decode steps), whatever the request's temperature, max_tokens or stop strings.

An adapter of training.recipe heads (kubetune.json "heads", decoder_heads.py) answers with its heads
instead: decoder_heads.predict on the same prompt ids, as its evaluation did; /v1/classify gets the
same answer with its per-field probabilities (GenerationRow.heads_answer, classify_heads.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune_trainer import decoder_heads
from kubetune_trainer.closed_set import AnswerSchema, choose_answer
from kubetune_trainer.prompt_frame import check_frame
from kubetune_trainer.serve.errors import AdapterLoadError

if TYPE_CHECKING:  # inference imports adapters, which imports this module
    from kubetune_trainer.serve.inference import GenerationRow


def answer_schema(name: str, meta: dict[str, Any]) -> AnswerSchema | None:
    """kubetune.json's answerSchema, or None; a malformed one refuses the adapter."""
    wire = meta.get("answerSchema")
    if wire is None:
        return None
    try:
        schema = AnswerSchema.from_wire(wire)
    except (KeyError, TypeError, ValueError) as err:
        raise AdapterLoadError(f"{name}: kubetune.json answerSchema is malformed: {err!r}") from None
    if not schema.fields or any(not f.values for f in schema.fields):
        raise AdapterLoadError(f"{name}: kubetune.json answerSchema has a field without values")
    return schema


def prompt_frame(name: str, meta: dict[str, Any]) -> dict[str, Any] | None:
    """kubetune.json's "prompt" (prompt_frame.py), or None; a malformed one refuses the adapter."""
    frame = meta.get("prompt")
    if frame is None:
        return None
    try:
        return check_frame(frame)
    except ValueError as err:
        raise AdapterLoadError(f"{name}: kubetune.json {err}") from None


def field_heads(name: str, model: Any, folder: Any) -> decoder_heads.FieldHeads | None:
    """The adapter's answer heads over the served model, or None for an adapter that has none; a
    kubetune.json naming heads without heads.safetensors beside it (a half-copied folder) refuses the
    adapter rather than answering another way than it was evaluated."""
    meta = decoder_heads.read_heads_meta(folder)
    if meta is None:
        meta_file = Path(folder) / "kubetune.json"
        if meta_file.is_file() and "heads" in json.loads(meta_file.read_text()):
            raise AdapterLoadError(
                f"{name}: kubetune.json names answer heads but {decoder_heads.HEADS_FILE} is missing"
            )
        return None
    try:
        return decoder_heads.load_heads(model, folder, meta)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise AdapterLoadError(
            f"{name}: heads.safetensors does not match kubetune.json heads: {err}"
        ) from None


def is_closed(row: GenerationRow) -> bool:
    return row.target.adapter is not None and row.target.adapter.answer_schema is not None


def answer_closed(registry: Any, rows: list[GenerationRow]) -> None:
    """Answer each row at once (model thread); rows finish with reason "stop"."""
    for row in rows:
        assert row.target.adapter is not None and row.target.adapter.answer_schema is not None
        target = row.target
        if target.adapter.heads is not None:
            _answer_with_heads(registry, row)
            continue
        answer = choose_answer(
            registry.model,
            registry.tokenizer,
            row.prompt_ids,
            row.target.adapter.answer_schema,
            route=lambda n, target=target: registry.route([target] * n),  # type: ignore[misc]
        )
        _finish(registry, row, answer.text)


def _finish(registry: Any, row: GenerationRow, text: str) -> None:
    row.generated = registry.tokenizer(text, add_special_tokens=False)["input_ids"]
    row.text = text
    if row.on_delta is not None:
        row.on_delta(text)
    row.finish_reason = "stop"


def _answer_with_heads(registry: Any, row: GenerationRow) -> None:
    assert row.target.adapter is not None
    heads = row.target.adapter.heads
    registry.route([row.target])  # one adapter: peft's active adapter (or folded), no per-row kwargs
    heads.decoder = registry.model  # the served model object changes when adapters come and go
    answer = decoder_heads.predict(heads, [row.prompt_ids], registry.tokenizer.pad_token_id)[0]
    row.heads_answer = answer  # /v1/classify reports its per-field probabilities
    _finish(registry, row, answer.text)
