"""The reply pieces of /v1/chat/completions and /v1/completions: SSE streaming of one row, and what the
whole and the streamed replies share (usage, logprobs in vLLM's shape, counting an abandoned request)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request

from kubetune_trainer.serve.admission import cancel_rows, client_deadline, disconnected
from kubetune_trainer.serve.answer_confidence import TokenLogprob, chat_wire, completion_wire
from kubetune_trainer.serve.errors import RequestTimeoutError, ServeError, error_body
from kubetune_trainer.serve.feedback import Prediction
from kubetune_trainer.serve.inference import GenerationRow, Sampling
from kubetune_trainer.serve.state import ServerState


def raise_row_error(rows: list[Any]) -> None:
    for row in rows:
        if row.error is not None:
            raise row.error


def logprobs_wire(
    row: GenerationRow, chat: bool, tokens: list[TokenLogprob] | None = None, offset: int = 0
) -> dict[str, Any] | None:
    """`tokens` (the row's, by default) in vLLM's logprobs shape; None where none were asked for."""
    if row.top_logprobs is None:
        return None
    tokens = row.logprobs if tokens is None else tokens
    return chat_wire(tokens) if chat else completion_wire(tokens, offset)


def abandoned(s: ServerState, rows: list[GenerationRow]) -> None:
    """Count what a request whose client left cost, once the model has let go of its rows."""
    labels = rows[0].target.label_values
    s.metrics.cancelled.labels(*labels).inc()
    s.metrics.tokens.labels(*labels).inc(row_usage(rows)["total_tokens"])


def row_usage(rows: list[GenerationRow]) -> dict[str, int]:
    prompt = sum(len(r.prompt_ids) for r in rows)
    completion = sum(len(r.generated) for r in rows)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def sse_reply(
    s: ServerState,
    request: Request,
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
    sent = [0, 0]  # tokens whose logprobs went out, characters of their text

    def chunk(delta: str | None, finish: str | None, usage: dict[str, int] | None = None) -> str:
        tokens = row.logprobs[sent[0] :]  # the model thread appends: what is here now goes out now
        logprobs = logprobs_wire(row, chat, tokens, sent[1])
        sent[0] += len(tokens)
        sent[1] += sum(len(t.token) for t in tokens)
        if chat:
            choice: dict[str, Any] = {
                "index": 0,
                "delta": {"content": delta} if delta is not None else {},
                "logprobs": logprobs,
                "finish_reason": finish,
            }
        else:
            choice = {"index": 0, "text": delta or "", "finish_reason": finish, "logprobs": logprobs}
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

    labels = row.target.label_values
    with s.admission.hold(), s.metrics.track(labels):
        task = asyncio.create_task(s.batcher.generate([row], sampling))
        gone = asyncio.ensure_future(disconnected(request))
        deadline = client_deadline(request)
        try:
            if chat:
                yield f"data: {json.dumps(role_chunk(response_id, created, model, row))}\n\n"
            while not (task.done() and deltas.empty()):
                getter = asyncio.ensure_future(deltas.get())
                timeout = None if deadline is None else max(0.0, deadline - loop.time())
                await asyncio.wait({getter, task, gone}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield chunk(getter.result(), None)
                    continue
                getter.cancel()
                if not task.done():  # the client left or its timeout passed
                    raise RequestTimeoutError("the client disconnected or its x-request-timeout passed")
            await task
            raise_row_error([row])
        except ServeError as err:  # headers are sent: the error travels as an SSE event
            s.metrics.errors.labels(*labels).inc()
            yield f"data: {json.dumps(error_body(err.message, err.type, err.code, err.param))}\n\n"
            return
        finally:
            gone.cancel()
            if not task.done():  # end this row at the next step; its batch goes on
                cancel_rows([row])
                task.add_done_callback(lambda _: abandoned(s, [row]))
        yield chunk(None, row.finish_reason)
        usage = row_usage([row])
        s.metrics.tokens.labels(*row.target.label_values).inc(usage["total_tokens"])
        s.feedback.remember(request.state.request_id, Prediction(*labels, (row.text,)))
        if include_usage:
            yield chunk(None, None, usage)
        yield "data: [DONE]\n\n"


def role_chunk(response_id: str, created: int, model: str, row: GenerationRow) -> dict[str, Any]:
    return {
        "id": response_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": row.target.served_id,
        "choices": [
            {
                "index": 0,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": None,
                "finish_reason": None,
            }
        ],
    }
