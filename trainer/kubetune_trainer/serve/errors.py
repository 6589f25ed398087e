"""Exceptions endpoints raise, and the one place that turns them into HTTP status + OpenAI error body.

Body shape (what the openai SDK parses): {"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("kubetune.serve")


class ServeError(Exception):
    """Base: a request the server refuses; status and OpenAI error type/code travel with it."""

    status = 400
    type = "invalid_request_error"
    code: str | None = None
    headers: dict[str, str] = {}

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidRequestError(ServeError):
    code = "invalid_request"


class ContextLengthError(ServeError):
    code = "context_length_exceeded"


class WrongTaskError(ServeError):
    code = "wrong_task"


class ModelNotFoundError(ServeError):
    status = 404
    code = "model_not_found"


class RequestIdNotFoundError(ServeError):
    status = 404
    code = "request_id_not_found"


class AuthenticationError(ServeError):
    status = 401
    type = "authentication_error"
    code = "invalid_admin_token"
    # A browser asks for the token (as the password) and sends it on every /admin request after.
    headers = {"WWW-Authenticate": 'Basic realm="kubetune admin", charset="UTF-8"'}


class AdminDisabledError(ServeError):
    status = 403
    type = "permission_error"
    code = "admin_disabled"


class AdapterLoadError(ServeError):
    """An adapter folder that cannot be served (missing files, wrong task, label count mismatch)."""

    status = 422
    code = "adapter_load_failed"


class AdapterDigestError(AdapterLoadError):
    """The weights at an adapter's URI are not the ones its version was recorded with (overwritten or
    tampered with): serving them under that version would be a lie."""

    code = "adapter_digest_mismatch"


class NotReadyError(ServeError):
    status = 503
    type = "server_error"
    code = "not_ready"


class OverloadedError(ServeError):
    """The server holds serving.maxQueued requests already; Retry-After says when to try again."""

    status = 429
    type = "rate_limit_error"
    code = "server_overloaded"

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        seconds = max(1, math.ceil(retry_after_s))
        # Retry-After is whole seconds (RFC 9110); the openai SDK also reads retry-after-ms.
        self.headers = {
            "Retry-After": str(seconds),
            "retry-after-ms": str(max(1, round(retry_after_s * 1000))),
        }


class RequestTooLargeError(ServeError):
    """A body over serving.maxBodyBytes, refused before it is read to the end or parsed."""

    status = 413
    code = "request_too_large"


class RequestTimeoutError(ServeError):
    """The client's own timeout (x-request-timeout) passed before its answer was ready."""

    status = 504
    type = "server_error"
    code = "timeout"


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _validation_message(err: RequestValidationError) -> tuple[str, str | None]:
    first = err.errors()[0] if err.errors() else {"loc": (), "msg": "invalid request"}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if first.get("type") == "json_invalid":
        return f"request body is not valid JSON: {first.get('msg')}", None
    where = ".".join(loc)
    return (f"{where}: {first.get('msg')}" if where else str(first.get("msg"))), where or None


def mark_counted(err: BaseException) -> None:
    """Note that `err` is already in the error metric (under its adapter), so the handler that
    answers it does not count it again."""
    err.__dict__["kubetune_counted"] = True


def install_error_handlers(app: FastAPI, count: Callable[[], None]) -> None:
    """Every failure leaves as an OpenAI-shaped JSON error; nothing reaches the client as a traceback.
    `count` adds one error under the unknown adapter: every refusal is counted once, the ones raised
    before a request's adapter is known (body, validation) included."""

    def answer(err: Exception, body: dict[str, Any], status: int, headers: dict[str, str]) -> JSONResponse:
        if not err.__dict__.get("kubetune_counted"):
            count()
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(ServeError)
    async def _serve_error(_: Request, err: ServeError) -> JSONResponse:
        return answer(err, error_body(err.message, err.type, err.code, err.param), err.status, err.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, err: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(err)
        return answer(err, error_body(message, "invalid_request_error", "invalid_request", param), 400, {})

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, err: StarletteHTTPException) -> JSONResponse:
        type_ = "invalid_request_error" if err.status_code < 500 else "server_error"
        return answer(err, error_body(str(err.detail), type_, None), err.status_code, {})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception) -> JSONResponse:
        # Starlette answers this one outside every middleware: the request id is added here.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        body = error_body(f"internal error: {type(err).__name__}", "server_error", "internal_error")
        request_id = request.scope.get("state", {}).get("request_id")
        return answer(err, body, 500, {"x-request-id": request_id} if request_id else {})
