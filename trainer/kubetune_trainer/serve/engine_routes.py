"""Engine mode: /v1/chat/completions, /v1/completions (SSE included) and /v1/models answered by
forwarding to the engine, with what is ours kept here: the request id (sent on as x-request-id, and
the response ids chatcmpl-<id>/cmpl-<id> that /v1/feedback takes), maxQueued shedding, the request,
error, latency and token metrics, the feedback memory, and each answer's confidence (from token
logprobs, asked of the engine where the client did not ask and taken out again: engine_monitor.py).

The bare adapter name is rewritten to the version the engine holds (`name@version`); the client's
`model` is written back into every answer. Engine errors keep their status and reach the client as
OpenAI-shaped errors, counted like ours.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from kubetune_trainer.serve.answer_confidence import TokenLogprob
from kubetune_trainer.serve.engine_monitor import ask_logprobs, choice_tokens, strip_logprobs
from kubetune_trainer.serve.engine_sync import EngineSync, Route, desired_set
from kubetune_trainer.serve.errors import InvalidRequestError, ServeError, error_body
from kubetune_trainer.serve.feedback import Prediction

router = APIRouter()


class EngineAnswerError(ServeError):
    """The engine refused or failed a request: its status, type and message, passed on."""

    def __init__(self, status: int, raw: bytes) -> None:
        message, type_, code, param = engine_error_fields(raw)
        super().__init__(message, param)
        self.status = status
        self.type = type_
        self.code = code


def engine_error_fields(raw: bytes) -> tuple[str, str, str | None, str | None]:
    """(message, type, code, param) of an engine error body: OpenAI's {"error": {...}} or older
    vLLM's flat ErrorResponse {"object": "error", "message", "type", "code"}.

    >>> engine_error_fields(b'{"object": "error", "message": "no", "type": "NotFoundError", "code": 404}')
    ('no', 'NotFoundError', '404', None)
    """
    try:
        doc = json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")[:500] or "engine error", "server_error", None, None
    err = doc.get("error", doc) if isinstance(doc, dict) else {}
    if not isinstance(err, dict):
        err = {"message": str(err)}
    code = err.get("code")
    return (
        str(err.get("message") or "engine error"),
        str(err.get("type") or "server_error"),
        None if code is None else str(code),
        err.get("param"),
    )


class AdaptersFollowConfigError(ServeError):
    status = 409
    code = "adapters_follow_config"


def engine_sync(request: Request) -> EngineSync:
    sync: EngineSync = request.app.state.kubetune_engine
    return sync


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(request: Request) -> dict[str, Any] | StreamingResponse:
    return await forward(request, "/v1/chat/completions", chat=True)


@router.post("/v1/completions", response_model=None)
async def completions(request: Request) -> dict[str, Any] | StreamingResponse:
    return await forward(request, "/v1/completions", chat=False)


async def read_body(request: Request) -> dict[str, Any]:
    """The request's JSON object; the engine validates the rest (its sampling options are its own)."""
    try:
        body = await request.json()
    except ValueError:
        raise InvalidRequestError("body: not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("body: expected a JSON object")
    if not isinstance(body.get("model"), str):
        raise InvalidRequestError("model: a string is required", "model")
    if not isinstance(body.get("stream", False), bool):
        raise InvalidRequestError("stream: expected true or false", "stream")
    return body


async def forward(request: Request, path: str, chat: bool) -> dict[str, Any] | StreamingResponse:
    sync = engine_sync(request)
    s = sync.state
    body = await read_body(request)
    s.require_ready()
    route = sync.route(body["model"])
    rid = request.state.request_id
    response_id = f"{'chatcmpl' if chat else 'cmpl'}-{rid}"
    headers = {"x-request-id": rid}
    monitor = sync.monitor if route.labels[1] else None  # the base has no reference to compare with
    out, added = ask_logprobs(body, chat) if monitor is not None else (body, False)
    if body.get("stream"):
        return await _open_stream(sync, request, body, out, added, route, path, response_id, chat)
    with s.admission.slot(route.labels), s.metrics.track(route.labels), sync.running(route):
        async with sync.client.forward(path, {**out, "model": route.engine_model}, headers) as answer:
            raw = await answer.aread()
        if answer.status_code != 200:
            raise EngineAnswerError(answer.status_code, raw)
        reply = json.loads(raw)
        _count(sync, route, reply.get("usage"))
        _observe(sync, route, reply.get("usage"), reply["choices"], chat)
        texts = [
            c.get("message", {}).get("content") or "" if chat else c.get("text", "") for c in reply["choices"]
        ]
        tokens = [choice_tokens(c, chat) for c in reply["choices"]] if monitor is not None else []
        for c in reply["choices"] if added else []:
            strip_logprobs(c)
        s.feedback.remember(rid, Prediction(*route.labels, tuple(texts)))
        if monitor is not None:
            await monitor.observe(route.labels, body, chat, list(zip(texts, tokens, strict=True)))
    return {**reply, "id": response_id, "model": body["model"]}


def _observe(
    sync: EngineSync, route: Route, usage: dict[str, Any] | None, choices: list[dict[str, Any]], chat: bool
) -> None:
    """Drift: the prompt's length (tokens the engine counted) and each answer's label."""
    if sync.drift is None or not route.labels[1] or not usage:
        return
    prompt_tokens = int(usage.get("prompt_tokens") or 0)
    for c in choices:
        text = (c.get("message") or c.get("delta") or {}).get("content") if chat else c.get("text")
        sync.drift.observe(*route.labels, prompt_tokens, text or "")


def _count(sync: EngineSync, route: Route, usage: dict[str, Any] | None) -> None:
    if usage:
        sync.state.metrics.tokens.labels(*route.labels).inc(int(usage.get("total_tokens") or 0))


async def _open_stream(
    sync: EngineSync,
    request: Request,
    body: dict[str, Any],
    asked: dict[str, Any],
    added: bool,
    route: Route,
    path: str,
    response_id: str,
    chat: bool,
) -> StreamingResponse:
    """Open the engine's stream before answering, so its refusals keep their HTTP status; then relay
    it chunk by chunk. Usage is always asked of the engine (for the token metric) and passed on only
    where the client asked for it; so are logprobs where monitoring reads them (`asked`, `added`)."""
    s = sync.state
    s.admission.check(route.labels)  # 429 while headers can still say so
    given = body.get("stream_options")
    options: dict[str, Any] = given if isinstance(given, dict) else {}
    wants_usage = bool(options.get("include_usage"))
    out = {**asked, "model": route.engine_model, "stream_options": {**options, "include_usage": True}}
    stack = AsyncExitStack()
    await stack.__aenter__()
    try:
        stack.enter_context(s.admission.hold())
        stack.enter_context(s.metrics.track(route.labels))
        stack.enter_context(sync.running(route))
        answer = await stack.enter_async_context(
            sync.client.forward(path, out, {"x-request-id": request.state.request_id})
        )
        if answer.status_code != 200:
            raise EngineAnswerError(answer.status_code, await answer.aread())
    except BaseException as err:  # the metrics and the admission place see the failure, then let go
        await stack.__aexit__(type(err), err, err.__traceback__)
        raise
    relay = _relay(sync, request, answer, stack, route, response_id, body, chat, wants_usage, added)
    return StreamingResponse(relay, media_type="text/event-stream")


async def _relay(
    sync: EngineSync,
    request: Request,
    answer: httpx.Response,
    stack: AsyncExitStack,
    route: Route,
    response_id: str,
    body: dict[str, Any],
    chat: bool,
    wants_usage: bool,
    added: bool,
) -> AsyncIterator[str]:
    """The engine's SSE events with our id and the client's model written in (and the logprobs
    kubetune added taken out); a broken engine stream ends with an error event, counted as an error."""
    model = body["model"]
    texts: list[str] = []
    tokens: list[TokenLogprob] = []
    try:
        async for line in answer.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[len("data:") :].strip()
            if data == "[DONE]":
                break
            event = json.loads(data)
            if "error" in event or event.get("object") == "error":
                sync.state.metrics.errors.labels(*route.labels).inc()
                yield f"data: {data}\n\n"
                continue
            choices = event.get("choices") or []
            for c in choices:
                texts.append((c.get("delta") or {}).get("content") or "" if chat else c.get("text") or "")
                tokens += choice_tokens(c, chat)
                if added:
                    strip_logprobs(c)
            if not choices and event.get("usage"):
                _count(sync, route, event["usage"])
                _observe(sync, route, event["usage"], [{"text": "".join(texts)}], chat=False)
                if not wants_usage:
                    continue
            elif not wants_usage:
                event.pop("usage", None)
            yield f"data: {json.dumps({**event, 'id': response_id, 'model': model})}\n\n"
        sync.state.feedback.remember(request.state.request_id, Prediction(*route.labels, ("".join(texts),)))
        if sync.monitor is not None and route.labels[1]:
            await sync.monitor.observe(route.labels, body, chat, [("".join(texts), tokens)])
        yield "data: [DONE]\n\n"
    except (httpx.HTTPError, ValueError) as err:
        sync.state.metrics.errors.labels(*route.labels).inc()
        body = error_body(f"the engine's stream broke: {err}", "server_error", "engine_stream_broken")
        yield f"data: {json.dumps(body)}\n\n"
    finally:
        await stack.aclose()


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    """What the engine holds and the client may send, with kubetune's ids: the base id, each bare
    name (aliasOf the version it routes to) and each name@version, cards shaped as vLLM's."""
    sync = engine_sync(request)
    config = sync.state.config
    card = {"object": "model", "created": 0, "owned_by": "kubetune", "task": config.task}
    data: list[dict[str, Any]] = []
    if sync.engine_base is not None:
        data.append(
            {
                **card,
                "id": config.base_model_id,
                "root": config.base_model.name,
                "parent": None,
                "engineModel": sync.engine_base,
                "baseModel": config.base_model.name,
            }
        )
    specs = desired_set(config.adapters)
    for model_id in sorted(sync.served):
        name, _, version = model_id.partition("@")
        uri = specs[model_id].uri if model_id in specs else None
        entry = {
            **card,
            "id": model_id,
            "root": uri,
            "parent": config.base_model_id,
            "name": name,
            "version": version,
            "uri": uri,
            "baseModel": config.base_model.name,
            "default": sync.alias.get(name) == model_id,
        }
        if entry["default"]:
            data.append({**entry, "id": name, "aliasOf": model_id})
        data.append(entry)
    return {"object": "list", "data": data}


@router.post("/admin/adapters")
@router.delete("/admin/adapters")
@router.post("/v1/load_lora_adapter")
@router.post("/v1/unload_lora_adapter")
async def adapters_follow_config(request: Request) -> None:
    """In front of an engine the adapter set is the ServeConfig's (reconciled into the engine); a
    load here would be undone by the next sync."""
    raise AdaptersFollowConfigError(
        "this server fronts an engine: its adapters follow the ServeConfig's `adapters` (the "
        "AdapterDeployment), loaded into the engine as name@version; change them there"
    )
