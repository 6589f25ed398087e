"""What one request may cost before any model work: its body's bytes, its text's characters.

The body is counted as it arrives (Content-Length is checked first, a chunked body is counted chunk by
chunk) and refused with 413 past serving.maxBodyBytes, before it is parsed. Text is bounded in
characters before it is tokenized: no tokenizer turns more than MAX_CHARS_PER_TOKEN characters of
ordinary text into one token, so text longer than that many characters per allowed token cannot fit
and is refused (or cut, where the task truncates) without tokenizing megabytes.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kubetune_trainer.serve.errors import ContextLengthError, RequestTooLargeError, error_body

MAX_CHARS_PER_TOKEN = 16


def char_limit(max_input_tokens: int) -> int:
    """Characters a text may have before it is tokenized."""
    return MAX_CHARS_PER_TOKEN * max_input_tokens


def chars_error(chars: int, max_input_tokens: int, param: str) -> ContextLengthError | None:
    """The error (400) for text that cannot fit maxInputTokens, named by its length; None if it may."""
    limit = char_limit(max_input_tokens)
    if chars <= limit:
        return None
    return ContextLengthError(
        f"{param}: {chars} characters, more than this server takes before tokenizing ({limit}: "
        f"{MAX_CHARS_PER_TOKEN} per token of maxInputTokens {max_input_tokens})",
        param,
    )


def check_chars(chars: int, max_input_tokens: int, param: str) -> None:
    err = chars_error(chars, max_input_tokens, param)
    if err is not None:
        raise err


def too_large(limit: int) -> RequestTooLargeError:
    return RequestTooLargeError(
        f"request body: more than this server's maxBodyBytes {limit} bytes ({limit / 2**20:.2f} MiB)"
    )


class BodyLimitMiddleware:
    """Reads the body up to `limit` bytes, then hands it to the app; past the limit answers 413 at once
    (the rest is never read). `count` adds the refusal to the error metric."""

    def __init__(self, app: ASGIApp, limit: int, count: Callable[[], None]) -> None:
        self.app = app
        self.limit = limit
        self.count = count

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before its body arrived: nothing to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body: Message | None = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        chunks.clear()

        async def replay() -> Message:
            nonlocal body
            if body is not None:
                message, body = body, None
                return message
            return await receive()  # after the body: http.disconnect when the client leaves

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.count()
        err = too_large(self.limit)
        # Connection: close, so the server does not read the rest of the body to reuse the connection.
        body = error_body(err.message, err.type, err.code)
        response = JSONResponse(body, status_code=err.status, headers={"connection": "close"})
        await response(scope, receive, send)
