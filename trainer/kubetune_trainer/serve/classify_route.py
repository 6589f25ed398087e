"""/v1/classify: many inputs per request, each answered or refused on its own.

An input longer than maxInputTokens is cut to it when `truncate` is on (the trainer cuts training
rows to maxSeqLength the same way) and marked `truncated`; with truncate off, or for an empty input,
that input gets its own OpenAI-shaped error in `data` and the rest of the batch is still answered. A
request with a single string input keeps the plain HTTP error (there is nothing else to answer).

Bounded before any model work: at most serving.maxInputsPerRequest inputs (400), text past
limits.MAX_CHARS_PER_TOKEN characters per allowed token cut (truncate) or refused before it is
tokenized, and tokenizing off the event loop. The inputs share forward passes in turn with other
requests' (batching.take_turns), and stop at the next pass when the client leaves.

Each answered item of a classifier: {"index", "label", "probabilities": {label: p}, "truncated", the
review signals}. On a causal-lm server, a model of training.recipe heads is answered too
(classify_heads.py): the same answer /v1/chat/completions gives for the input framed as in training,
as {"index", "label", "fields": {field: {"label", "probabilities": {value: p}}}, "answer" (the chat
answer's text), "truncated": false} ("label" is the one field's value, with that field's
"probabilities" at the top too, or the answer text for several fields); any other causal-lm model is
refused with wrong_task.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request

from kubetune_trainer.serve import classify_heads, review_routes
from kubetune_trainer.serve.adapters import Target
from kubetune_trainer.serve.admission import while_client_waits
from kubetune_trainer.serve.classify_heads import heads_target
from kubetune_trainer.serve.errors import (
    ContextLengthError,
    InvalidRequestError,
    ModelNotFoundError,
    ServeError,
    error_body,
)
from kubetune_trainer.serve.feedback import Prediction
from kubetune_trainer.serve.fresh import RememberedInput, scrub_metadata
from kubetune_trainer.serve.inference import ClassifyRow, Sampling
from kubetune_trainer.serve.limits import char_limit, chars_error
from kubetune_trainer.serve.routes import resolve
from kubetune_trainer.serve.schemas import ClassifyRequest
from kubetune_trainer.serve.state import ServerState, all_states, task_state

router = APIRouter()
TOKENIZE_SLICE = 16  # inputs per call on the tokenizing thread


@dataclass
class Prepared:
    """One input after the length policy: its token count, or the error it gets instead."""

    tokens: int = 0
    truncated: bool = False
    error: ServeError | None = None


async def prepare(s: ServerState, texts: list[str]) -> tuple[list[str], list[Prepared]]:
    """Apply the length policy to every input, without stopping at the first bad one: text past the
    character bound is cut (truncate) or refused before it is tokenized; the rest is tokenized off the
    event loop. Returns the texts to classify (cut where cut) and what each input gets."""
    limit, cut = s.config.max_input_tokens, s.config.truncate
    chars = char_limit(limit)
    kept = [t[:chars] if cut else t for t in texts]
    counts: list[int] = []
    countable = [t if len(t) <= chars else "" for t in kept]
    for start in range(0, len(countable), TOKENIZE_SLICE):  # other requests get the thread in between
        counts += await s.tokenize.call(_token_counts, countable[start : start + TOKENIZE_SLICE])
    out = []
    for i, (text, n) in enumerate(zip(kept, counts, strict=True)):
        param = f"input[{i}]"
        if len(text) > chars:
            out.append(Prepared(error=chars_error(len(text), limit, param)))
        elif not text.strip():
            out.append(Prepared(error=InvalidRequestError(f"{param}: empty", param)))
        elif n > limit and not cut:
            message = f"{param}: {n} tokens, more than this server's maxInputTokens {limit} (truncate off)"
            out.append(Prepared(error=ContextLengthError(message, param)))
        else:
            out.append(Prepared(tokens=min(n, limit), truncated=n > limit or len(texts[i]) > chars))
    return kept, out


def _token_counts(tok: Any, texts: list[str]) -> list[int]:
    return [len(ids) for ids in tok(texts).input_ids]


def _check_count(s: ServerState, body: ClassifyRequest) -> None:
    most = s.config.max_inputs_per_request
    if len(body.inputs) > most:
        raise InvalidRequestError(
            f"input: {len(body.inputs)} inputs, more than this server's maxInputsPerRequest {most}; "
            "send them in several requests",
            "input",
        )


def _classifier(request: Request, model: str) -> tuple[ServerState, Target]:
    """The state answering `model` and its target: the classifier, or, for a model a causal-lm state
    serves (the only task here, or a name it has loaded), that state: classify_heads.heads_target
    refuses a model that answers by generation."""
    states = all_states(request)
    causal = [x for x in states if x.config.task == "causal-lm"]
    classifiers = [x for x in states if x.config.task == "sequence-classification"]
    for s in causal:
        if classifiers:
            try:
                target = s.registry.resolve(model)
            except ModelNotFoundError:
                continue
        s.require_ready()
        return s, heads_target(target if classifiers else resolve(s, model))
    s = task_state(
        request, "sequence-classification", "this server runs no classifier; use /v1/chat/completions"
    )
    s.require_ready()
    return s, resolve(s, model)


@router.post("/v1/classify")
async def classify(body: ClassifyRequest, request: Request) -> dict[str, Any]:
    s, target = _classifier(request, body.model)
    _check_count(s, body)
    if s.config.task == "causal-lm":
        return await _classify_with_heads(s, request, body, target)
    texts, prepared = await prepare(s, body.inputs)
    if isinstance(body.input, str) and prepared[0].error is not None:
        raise prepared[0].error
    with s.admission.slot(target.label_values), s.metrics.track(target.label_values):
        rows = {i: ClassifyRow(target, texts[i]) for i, p in enumerate(prepared) if p.error is None}
        if rows:
            left = s.metrics.cancelled.labels(*target.label_values).inc
            work = s.batcher.classify(list(rows.values()))
            await while_client_waits(request, work, list(rows.values()), left)
        for i, row in rows.items():
            prepared[i].error = row.error
        ok = {i: row for i, row in rows.items() if row.error is None}
        if not ok:
            raise next(p.error for p in prepared if p.error is not None)
        data, served = await _answer(s, request, body, texts, prepared, ok)
    return _envelope(request, body, served, data, sum(prepared[i].tokens for i in ok))


def _envelope(
    request: Request, body: ClassifyRequest, served: Target, data: list[dict[str, Any]], tokens: int
) -> dict[str, Any]:
    return {
        "id": f"clf-{request.state.request_id}",
        "object": "classification",
        "created": int(time.time()),
        "model": body.model,
        "system_fingerprint": served.served_id,
        "data": data,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


async def _classify_with_heads(
    s: ServerState, request: Request, body: ClassifyRequest, target: Target
) -> dict[str, Any]:
    """A heads adapter on a causal-lm server (classify_heads.py): each input framed as in training and
    answered by the chat endpoint's code, one item per input, a refused input with its own error."""
    assert target.adapter is not None and target.adapter.prompt_frame is not None
    limit = s.config.max_input_tokens
    errors = classify_heads.input_errors(body.inputs, limit)
    fine = [i for i, e in enumerate(errors) if e is None]
    frame = target.adapter.prompt_frame
    ids = await s.tokenize.call(classify_heads.prompt_ids, frame, [body.inputs[i] for i in fine])
    prompts = dict(zip(fine, ids, strict=True))
    for i, row_ids in prompts.items():
        errors[i] = classify_heads.length_error(i, row_ids, limit)
    if isinstance(body.input, str) and errors[0] is not None:
        raise errors[0]
    with s.admission.slot(target.label_values), s.metrics.track(target.label_values):
        rows = classify_heads.rows_for(target, {i: p for i, p in prompts.items() if errors[i] is None})
        if rows:
            left = s.metrics.cancelled.labels(*target.label_values).inc
            work = s.batcher.generate(list(rows.values()), Sampling())
            await while_client_waits(request, work, list(rows.values()), left)
        for i, row in rows.items():
            if row.error is not None and not isinstance(row.error, ServeError):
                raise row.error  # a model failure, not this input's fault: 500, as on the chat endpoint
            errors[i] = errors[i] or row.error
        ok = {i: row for i, row in rows.items() if errors[i] is None and row.heads_answer is not None}
        if not ok:
            raise next(e for e in errors if e is not None)
        served = next(iter(ok.values())).target
        tokens = sum(len(row.prompt_ids) for row in ok.values())
        s.metrics.tokens.labels(*served.label_values).inc(tokens)
        # Feedback compares with what the chat endpoint would have answered: the answer text.
        texts = tuple(ok[i].text if i in ok else "" for i in range(len(errors)))
        s.feedback.remember(request.state.request_id, Prediction(*served.label_values, texts))
    schema = served.adapter.heads.schema  # type: ignore[union-attr]
    data = [
        {"index": i, **classify_heads.answer_item(schema, ok[i].heads_answer), "truncated": False}
        if i in ok
        else {"index": i, **_error_item(errors[i])}
        for i in range(len(errors))
    ]
    return _envelope(request, body, served, data, tokens)


def _error_item(error: ServeError | None) -> dict[str, Any]:
    assert error is not None
    return error_body(error.message, error.type, error.code, error.param)


async def _answer(
    s: ServerState,
    request: Request,
    body: ClassifyRequest,
    texts: list[str],
    prepared: list[Prepared],
    ok: dict[int, ClassifyRow],
) -> tuple[list[dict[str, Any]], Target]:
    """The `data` items in input order; answered rows also feed metrics, feedback, drift and review."""
    rows = list(ok.values())
    served = rows[0].target
    labels = served.adapter.labels if served.adapter else s.registry.labels
    predicted = {
        i: labels[max(range(len(r.probabilities)), key=r.probabilities.__getitem__)] for i, r in ok.items()
    }
    s.metrics.tokens.labels(*served.label_values).inc(sum(prepared[i].tokens for i in ok))
    # Feedback indexes by input position; a refused input has no prediction ("").
    outputs = tuple(predicted.get(i, "") for i in range(len(prepared)))
    s.feedback.remember(request.state.request_id, Prediction(*served.label_values, outputs))
    _monitor(
        s,
        request.state.request_id,
        body,
        texts,
        served,
        list(predicted.values()),
        rows,
        [prepared[i].tokens for i in ok],
    )
    found = dict(zip(ok, review_routes.signals(s, served, rows), strict=True))
    await review_routes.capture(s, body, served, list(labels), rows, list(found.values()))
    data: list[dict[str, Any]] = []
    for i, p in enumerate(prepared):
        if p.error is not None:
            data.append(
                {"index": i, **error_body(p.error.message, p.error.type, p.error.code, p.error.param)}
            )
            continue
        data.append(
            {
                "index": i,
                "label": predicted[i],
                "probabilities": dict(zip(labels, ok[i].probabilities, strict=True)),
                "truncated": p.truncated,
                **found[i].wire(),
            }
        )
    return data, served


def _monitor(
    s: ServerState,
    request_id: str,
    body: ClassifyRequest,
    texts: list[str],
    served: Target,
    predicted: list[str],
    rows: list[ClassifyRow],
    lengths: list[int],
) -> None:
    """Feed the drift window, and remember the inputs (scrubbed) where fresh data is kept."""
    if s.drift is not None:
        s.drift.observe(
            *served.label_values,
            predicted,
            [max(r.probabilities) for r in rows],
            lengths,
            [r.embedding for r in rows],
        )
    if s.estimates is not None:
        s.estimates.observe(*served.label_values, [max(r.probabilities) for r in rows])
    if s.inputs is not None:
        m = s.config.monitoring
        metadata = scrub_metadata(body.metadata, m.drop_fields, m.hash_fields, salt=served.label_values[0])
        s.inputs.remember(request_id, RememberedInput(tuple(texts), metadata))
