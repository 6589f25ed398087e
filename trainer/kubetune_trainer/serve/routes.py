"""OpenAI-compatible inference endpoints plus /v1/classify and /v1/feedback. Endpoints only raise."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from kubetune_trainer.serve.adapters import Target
from kubetune_trainer.serve.admission import while_client_waits
from kubetune_trainer.serve.completion_reply import (
    abandoned,
    logprobs_wire,
    raise_row_error,
    row_usage,
    sse_reply,
)
from kubetune_trainer.serve.errors import ContextLengthError, InvalidRequestError, WrongTaskError
from kubetune_trainer.serve.feedback import FeedbackEvent, Prediction
from kubetune_trainer.serve.inference import GenerationRow, Sampling
from kubetune_trainer.serve.limits import check_chars
from kubetune_trainer.serve.schemas import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    FeedbackRequest,
    _Sampling,
)
from kubetune_trainer.serve.state import ServerState, all_states, server_state, task_state

router = APIRouter()


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest, request: Request
) -> dict[str, Any] | StreamingResponse:
    s = causal_state(request)
    target = resolve(s, body.model)
    check_chars(sum(len(m.text) for m in body.messages), s.config.max_input_tokens, "messages")
    prompt = await s.tokenize.call(_chat_prompt, body.messages)
    return await _complete(s, request, body, target, [_check_length(s, prompt, "messages")], chat=True)


@router.post("/v1/completions", response_model=None)
async def completions(body: CompletionRequest, request: Request) -> dict[str, Any] | StreamingResponse:
    s = causal_state(request)
    target = resolve(s, body.model)
    if body.stream and len(body.prompts) > 1:
        raise InvalidRequestError("stream: true takes one prompt, not a list", "prompt")
    if len(body.prompts) > s.config.max_batch_size:  # wider than a batch: it would hold back others
        raise InvalidRequestError(
            f"prompt: {len(body.prompts)} prompts, more than this server's maxBatchSize "
            f"{s.config.max_batch_size} per request; send them in several requests",
            "prompt",
        )
    for i, p in enumerate(body.prompts):
        check_chars(
            len(p), s.config.max_input_tokens, "prompt" if isinstance(body.prompt, str) else f"prompt[{i}]"
        )
    ids = await s.tokenize.call(_prompt_ids, body.prompts)
    prompts = [_check_length(s, p, "prompt") for p in ids]
    return await _complete(s, request, body, target, prompts, chat=False)


@router.post("/v1/feedback")
async def feedback(body: FeedbackRequest, request: Request) -> dict[str, Any]:
    request_id = _strip_id_prefix(body.request_id)
    s = next((t for t in all_states(request) if t.feedback.knows(request_id)), server_state(request))
    event = s.feedback.record(request_id, body.index, body.label, body.correct)
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
def causal_state(request: Request) -> ServerState:
    s = task_state(request, "causal-lm", "this server runs no causal-lm; use /v1/classify")
    s.require_ready()
    return s


def resolve(s: ServerState, model: str) -> Target:
    """The adapter or base `model` names (ModelNotFoundError, counted as an error of the unknown
    adapter by the error handler, otherwise)."""
    return s.registry.resolve(model)


def _chat_prompt(tok: Any, messages: list[ChatMessage]) -> list[int]:
    """The chat template applied and tokenized (on the tokenizing thread)."""
    if not tok.chat_template:
        raise WrongTaskError("this base model has no chat template; use /v1/completions", "messages")
    text = tok.apply_chat_template(
        [{"role": m.role, "content": m.text} for m in messages], add_generation_prompt=True, tokenize=False
    )
    return list(tok(text, add_special_tokens=False).input_ids)


def _prompt_ids(tok: Any, prompts: list[str]) -> list[list[int]]:
    return [list(ids) for ids in tok(prompts, add_special_tokens=False).input_ids]


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


async def _complete(
    s: ServerState, request: Request, body: _Sampling, target: Target, prompts: list[list[int]], chat: bool
) -> dict[str, Any] | StreamingResponse:
    rows = [
        GenerationRow(
            target, ids, _max_new_tokens(s, body), body.stop_strings, top_logprobs=body.logprob_count
        )
        for ids in prompts
    ]
    sampling = Sampling(body.temperature, body.top_p)
    rid = request.state.request_id
    response_id = f"{'chatcmpl' if chat else 'cmpl'}-{rid}"
    if body.stream:
        s.admission.check(target.label_values)  # 429 while headers can still say so
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            sse_reply(s, request, response_id, body.model, rows[0], sampling, chat, include_usage),
            media_type="text/event-stream",
        )
    with s.admission.slot(target.label_values), s.metrics.track(target.label_values):
        await while_client_waits(
            request, s.batcher.generate(rows, sampling), rows, lambda: abandoned(s, rows)
        )
        raise_row_error(rows)
        served = rows[0].target
        usage = row_usage(rows)
        s.metrics.tokens.labels(*served.label_values).inc(usage["total_tokens"])
        s.feedback.remember(rid, Prediction(*served.label_values, tuple(r.text for r in rows)))
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": r.text},
            "logprobs": logprobs_wire(r, chat),
            "finish_reason": r.finish_reason,
        }
        if chat
        else {
            "index": i,
            "text": r.text,
            "finish_reason": r.finish_reason,
            "logprobs": logprobs_wire(r, chat),
        }
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
