"""Load shedding and abandonment: a bounded number of admitted requests, and no work for clients
that left.

Admission runs on the event loop only (no lock): a request beyond `serving.maxQueued` gets 429 with a
Retry-After estimated from recent request durations, before it costs any model time. An admitted
request that loses its client (disconnect, or its own x-request-timeout passing) marks its rows
finished with reason "cancelled"; the generation loop skips finished rows, so they stop at the next
step, and rows still queued never start.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from fastapi import Request

from kubetune_trainer.serve.errors import InvalidRequestError, OverloadedError, RequestTimeoutError
from kubetune_trainer.serve.metrics import ServeMetrics

TIMEOUT_HEADERS = ("x-request-timeout", "x-stainless-timeout")  # seconds; the second: newer openai SDKs
EWMA = 0.2  # weight of the newest duration in the Retry-After estimate


class Admission:
    """At most `limit` inference requests inside the server at once; the rest are shed."""

    def __init__(self, limit: int, metrics: ServeMetrics) -> None:
        self.limit = limit
        self.metrics = metrics
        self.held = 0
        self.mean_s = 1.0  # recent request duration, seconds

    def check(self, labels: tuple[str, str]) -> None:
        """Raise OverloadedError (429) when no place is free."""
        if self.held >= self.limit:
            self.metrics.shed.labels(*labels).inc()
            raise OverloadedError(
                f"the server holds {self.held} requests (serving.maxQueued {self.limit}); retry later",
                self.retry_after_s(),
            )

    def slot(self, labels: tuple[str, str]) -> contextlib.AbstractContextManager[None]:
        """Hold one place while the block runs, or raise OverloadedError (429) when none is free."""
        self.check(labels)
        return self.hold()

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Hold one place (after `check`; a streamed response takes it when its body starts)."""
        self.held += 1
        self.metrics.queue_length.set(self.held)
        started = time.perf_counter()
        try:
            yield
        finally:
            self.held -= 1
            self.metrics.queue_length.set(self.held)
            self.mean_s += EWMA * (time.perf_counter() - started - self.mean_s)

    def retry_after_s(self) -> float:
        """When a place is likely free: the oldest admitted request should be done in about mean_s."""
        return self.mean_s


def client_deadline(request: Request) -> float | None:
    """The client's timeout (seconds from now) from x-request-timeout, as loop time; None if unset."""
    for name in TIMEOUT_HEADERS:
        raw = request.headers.get(name)
        if raw is None:
            continue
        try:
            seconds = float(raw)
        except ValueError:
            raise InvalidRequestError(f"{name}: {raw!r} is not a number of seconds", name) from None
        if not 0 < seconds <= 86400:
            raise InvalidRequestError(f"{name}: {raw} must be between 0 and 86400 seconds", name)
        return asyncio.get_running_loop().time() + seconds
    return None


async def disconnected(request: Request) -> None:
    """Returns once the client has gone (the body is already read, so the next message says so)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def cancel_rows(rows: list[Any]) -> None:
    """Finish rows at the next generation step (and never start those still queued)."""
    for row in rows:
        if row.finish_reason is None:
            row.finish_reason = "cancelled"


async def while_client_waits(
    request: Request,
    work: Awaitable[None],
    rows: list[Any],
    on_abandoned: Callable[[], None],
) -> None:
    """Await `work` unless the client leaves or its deadline passes first; then cancel its rows and
    call `on_abandoned` once the model is done with them (the batch they share goes on)."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(disconnected(request))
    deadline = client_deadline(request)
    loop = asyncio.get_running_loop()
    timeout = None if deadline is None else max(0.0, deadline - loop.time())
    try:
        await asyncio.wait({task, gone}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if task.done():
        task.result()
        return
    cancel_rows(rows)
    task.add_done_callback(lambda t: _after_abandoned(t, on_abandoned))
    if gone.done() and not gone.cancelled():
        raise RequestTimeoutError("the client disconnected; generation stopped")
    raise RequestTimeoutError("the request's x-request-timeout passed; generation stopped")


def _after_abandoned(task: asyncio.Future[None], on_abandoned: Callable[[], None]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: nobody awaits an abandoned request's failure
    on_abandoned()
