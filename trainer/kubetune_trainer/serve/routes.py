"""OpenAI-compatible inference endpoints plus /v1/classify and /v1/feedback. Endpoints only raise."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from kubetune_trainer.serve import review_routes
from kubetune_trainer.serve.adapters import Target
from kubetune_trainer.serve.errors import (
    ContextLengthError,
    InvalidRequestError,
    ModelNotFoundError,
    ServeError,
    WrongTaskError,
    error_body,
)
from kubetune_trainer.serve.feedback import FeedbackEvent, Prediction
from kubetune_trainer.serve.fresh import RememberedInput, scrub_metadata
from kubetune_trainer.serve.inference import ClassifyRow, GenerationRow, Sampling
from kubetune_trainer.serve.metrics import UNKNOWN
from kubetune_trainer.serve.schemas import (
    ChatCompletionRequest,
    ChatMessage,
    ClassifyRequest,
    CompletionRequest,
    FeedbackRequest,
    _Sampling,
)
from kubetune_trainer.serve.state import ServerState, server_state

router = APIRouter()


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest, request: Request
) -> dict[str, Any] | StreamingResponse:
    s = server_state(request)
    target = _causal_target(s, body.model)
    return await _complete(s, request, body, target, [_chat_prompt(s, body.messages)], chat=True)


@router.post("/v1/completions", response_model=None)
async def completions(body: CompletionRequest, request: Request) -> dict[str, Any] | StreamingResponse:
    s = server_state(request)
    target = _causal_target(s, body.model)
    if body.stream and len(body.prompts) > 1:
        raise InvalidRequestError("stream: true takes one prompt, not a list", "prompt")
    prompts = [
        _check_length(s, s.registry.tokenizer(p, add_special_tokens=False).input_ids, "prompt")
        for p in body.prompts
    ]
    return await _complete(s, request, body, target, prompts, chat=False)


@router.post("/v1/classify")
async def classify(body: ClassifyRequest, request: Request) -> dict[str, Any]:
    s = server_state(request)
    s.require_ready()
    if s.config.task != "sequence-classification":
        raise WrongTaskError("this server runs a causal-lm; use /v1/chat/completions or /v1/completions")
    target = _resolve(s, body.model)
    lengths = [len(_check_length(s, s.registry.tokenizer(t).input_ids, "input")) for t in body.inputs]
    with s.metrics.track(target.label_values):
        rows = [ClassifyRow(target, text) for text in body.inputs]
        await s.batcher.classify(rows)
        _raise_row_error(rows)
        served = rows[0].target
        labels = served.adapter.labels if served.adapter else s.registry.labels
        predicted = [labels[max(range(len(r.probabilities)), key=r.probabilities.__getitem__)] for r in rows]
        s.metrics.tokens.labels(*served.label_values).inc(sum(lengths))
        s.feedback.remember(request.state.request_id, Prediction(*served.label_values, tuple(predicted)))
        _monitor(s, request.state.request_id, body, served, predicted, rows, lengths)
        found = review_routes.signals(s, served, rows)
        await review_routes.capture(s, body, served, list(labels), rows, found)
    return {
        "id": f"clf-{request.state.request_id}",
        "object": "classification",
        "created": int(time.time()),
        "model": body.model,
        "system_fingerprint": served.served_id,
        "data": [
            {
                "index": i,
                "label": label,
                "probabilities": dict(zip(labels, r.probabilities, strict=True)),
                **sig.wire(),
            }
            for i, (label, r, sig) in enumerate(zip(predicted, rows, found, strict=True))
        ],
        "usage": {"prompt_tokens": sum(lengths), "total_tokens": sum(lengths)},
    }


@router.post("/v1/feedback")
async def feedback(body: FeedbackRequest, request: Request) -> dict[str, Any]:
    s = server_state(request)
    event = s.feedback.record(_strip_id_prefix(body.request_id), body.index, body.label, body.correct)
    await _keep_fresh(s, event)
    accuracy, window = s.feedback.accuracy(event.adapter, event.version)
    return {
        "object": "feedback",
        "requestId": event.request_id,
        "model": f"{event.adapter}@{event.version}",
        "predicted": event.predicted,
        "correct": event.correct,
        "rollingAccuracy": accuracy,
        "windowSize": window,
    }


def _monitor(
    s: ServerState,
    request_id: str,
    body: ClassifyRequest,
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
    if s.inputs is not None:
        m = s.config.monitoring
        metadata = scrub_metadata(body.metadata, m.drop_fields, m.hash_fields, salt=served.label_values[0])
        s.inputs.remember(request_id, RememberedInput(tuple(body.inputs), metadata))


async def _keep_fresh(s: ServerState, event: FeedbackEvent) -> None:
    """A labelled input goes to the fresh dataset: the true label, or the prediction judged correct."""
    if s.fresh is None or s.inputs is None:
        return
    remembered = s.inputs.get(event.request_id)
    label = event.true_label if event.true_label is not None else (event.predicted if event.correct else None)
    served = [a.labels for a in s.registry.served() if (a.name, a.version) == (event.adapter, event.version)]
    known = served[0] if served else s.registry.labels
    if remembered is None or label is None or label not in known:
        return  # not remembered, no label, or a label the trainer would reject
    text = remembered.texts[event.index]
    await asyncio.to_thread(s.fresh.append, event.adapter, text, label, remembered.metadata)


def _strip_id_prefix(request_id: str) -> str:
    """Feedback may quote the x-request-id or a response id (chatcmpl-<id>, cmpl-<id>, clf-<id>)."""
    for prefix in ("chatcmpl-", "cmpl-", "clf-"):
        if request_id.startswith(prefix):
            return request_id[len(prefix) :]
    return request_id


# ---- helpers ---------------------------------------------------------------------------------------
def _causal_target(s: ServerState, model: str) -> Target:
    s.require_ready()
    if s.config.task != "causal-lm":
        raise WrongTaskError("this server runs a sequence-classification model; use /v1/classify")
    return _resolve(s, model)


def _resolve(s: ServerState, model: str) -> Target:
    try:
        return s.registry.resolve(model)
    except ModelNotFoundError:
        s.metrics.errors.labels(*UNKNOWN).inc()
        raise


def _chat_prompt(s: ServerState, messages: list[ChatMessage]) -> list[int]:
    tok = s.registry.tokenizer
    if not tok.chat_template:
        raise WrongTaskError("this base model has no chat template; use /v1/completions", "messages")
    text = tok.apply_chat_template(
        [{"role": m.role, "content": m.text} for m in messages], add_generation_prompt=True, tokenize=False
    )
    return _check_length(s, tok(text, add_special_tokens=False).input_ids, "messages")


def _check_length(s: ServerState, ids: list[int], param: str) -> list[int]:
    if len(ids) > s.config.max_input_tokens:
        raise ContextLengthError(
            f"{param}: {len(ids)} tokens, more than this server's maxInputTokens {s.config.max_input_tokens}",
            param,
        )
    if not ids:
        raise InvalidRequestError(f"{param}: empty", param)
    return ids


def _max_new_tokens(s: ServerState, body: _Sampling) -> int:
    asked = body.requested_tokens
    if asked is not None and asked > s.config.max_new_tokens:
        raise InvalidRequestError(
            f"max_tokens: {asked} is more than this server's maxNewTokens {s.config.max_new_tokens}",
            "max_tokens",
        )
    return asked or s.config.max_new_tokens


def _raise_row_error(rows: list[Any]) -> None:
    for row in rows:
        if row.error is not None:
            raise row.error


async def _complete(
    s: ServerState, request: Request, body: _Sampling, target: Target, prompts: list[list[int]], chat: bool
) -> dict[str, Any] | StreamingResponse:
    rows = [GenerationRow(target, ids, _max_new_tokens(s, body), body.stop_strings) for ids in prompts]
    sampling = Sampling(body.temperature, body.top_p)
    rid = request.state.request_id
    response_id = f"{'chatcmpl' if chat else 'cmpl'}-{rid}"
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            _stream(s, rid, response_id, body.model, rows[0], sampling, chat, include_usage),
            media_type="text/event-stream",
        )
    with s.metrics.track(target.label_values):
        await s.batcher.generate(rows, sampling)
        _raise_row_error(rows)
        served = rows[0].target
        usage = _usage(rows)
        s.metrics.tokens.labels(*served.label_values).inc(usage["total_tokens"])
        s.feedback.remember(rid, Prediction(*served.label_values, tuple(r.text for r in rows)))
    choices = [
        {"index": i, "message": {"role": "assistant", "content": r.text}, "finish_reason": r.finish_reason}
        if chat
        else {"index": i, "text": r.text, "finish_reason": r.finish_reason, "logprobs": None}
        for i, r in enumerate(rows)
    ]
    return {
        "id": response_id,
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": body.model,
        "system_fingerprint": served.served_id,
        "choices": choices,
        "usage": usage,
    }


def _usage(rows: list[GenerationRow]) -> dict[str, int]:
    prompt = sum(len(r.prompt_ids) for r in rows)
    completion = sum(len(r.generated) for r in rows)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _stream(
    s: ServerState,
    rid: str,
    response_id: str,
    model: str,
    row: GenerationRow,
    sampling: Sampling,
    chat: bool,
    include_usage: bool,
) -> AsyncIterator[str]:
    """SSE: one chunk per text delta, a final chunk with finish_reason, optional usage, [DONE]."""
    loop = asyncio.get_running_loop()
    deltas: asyncio.Queue[str] = asyncio.Queue()
    row.on_delta = lambda text: loop.call_soon_threadsafe(deltas.put_nowait, text)
    created = int(time.time())

    def chunk(delta: str | None, finish: str | None, usage: dict[str, int] | None = None) -> str:
        if chat:
            choice: dict[str, Any] = {
                "index": 0,
                "delta": {"content": delta} if delta is not None else {},
                "finish_reason": finish,
            }
        else:
            choice = {"index": 0, "text": delta or "", "finish_reason": finish, "logprobs": None}
        payload = {
            "id": response_id,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created,
            "model": model,
            "system_fingerprint": row.target.served_id,
            "choices": [choice] if usage is None else [],
            **({"usage": usage} if usage else {}),
        }
        return f"data: {json.dumps(payload)}\n\n"

    with s.metrics.track(row.target.label_values):
        task = asyncio.create_task(s.batcher.generate([row], sampling))
        try:
            if chat:
                yield f"data: {json.dumps(_role_chunk(response_id, created, model, row))}\n\n"
            while not (task.done() and deltas.empty()):
                getter = asyncio.ensure_future(deltas.get())
                await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield chunk(getter.result(), None)
                else:
                    getter.cancel()
            await task
            _raise_row_error([row])
        except ServeError as err:  # headers are sent: the error travels as an SSE event
            s.metrics.errors.labels(*row.target.label_values).inc()
            yield f"data: {json.dumps(error_body(err.message, err.type, err.code, err.param))}\n\n"
            return
        finally:
            if not task.done():  # client went away: end this row at the next step; its batch goes on
                row.finish_reason = row.finish_reason or "cancelled"
        yield chunk(None, row.finish_reason)
        usage = _usage([row])
        s.metrics.tokens.labels(*row.target.label_values).inc(usage["total_tokens"])
        s.feedback.remember(rid, Prediction(*row.target.label_values, (row.text,)))
        if include_usage:
            yield chunk(None, None, usage)
        yield "data: [DONE]\n\n"


def _role_chunk(response_id: str, created: int, model: str, row: GenerationRow) -> dict[str, Any]:
    return {
        "id": response_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": row.target.served_id,
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
    }
