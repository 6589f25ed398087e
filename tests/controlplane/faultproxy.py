"""A fault-injecting HTTP proxy in front of the real kube-apiserver, for the faults a real server will
not produce on demand: 429 with Retry-After, 500, 409 on a write, a watch cut mid-stream, a watch that
answers 410 Gone. Everything else is passed through byte for byte (watch streams stay streams), and
every request is counted, so a test can also see how many calls a piece of work costs.

Clients talk plain HTTP to the proxy on loopback with their own bearer token; the proxy forwards the
``Authorization`` header over TLS to the API server (verified against the test CA), so RBAC applies
to the client exactly as without the proxy.
"""

from __future__ import annotations

import asyncio
import collections
import json
import re
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

from .plane import kubeconfig

_HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "accept-encoding"}


@dataclass
class Fault:
    """Answer up to ``times`` requests matching ``method`` and the ``path`` regex (query included)
    with ``status`` — or, for watches, cut the stream (``cut_after`` events) or send 410 Gone."""

    method: str
    path: str
    status: int = 500
    times: int = 1
    retry_after: int | None = None
    kind: str = "respond"  # respond | cut-watch | gone-watch
    cut_after: int = 1
    hits: int = 0

    def matches(self, method: str, target: str) -> bool:
        return (
            self.hits < self.times
            and self.method in (method, "*")
            and re.search(self.path, target) is not None
        )


@dataclass
class FaultProxy:
    upstream: str
    ca: Path
    faults: list[Fault] = field(default_factory=list)
    requests: collections.Counter[str] = field(default_factory=collections.Counter)
    port: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._serve()), daemon=True, name="fault-proxy"
        )

    # -- lifecycle ------------------------------------------------------------------------------------
    def __enter__(self) -> FaultProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fault proxy did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kubeconfig(self, path: Path, token: str, namespace: str) -> Path:
        """A kubeconfig that goes through the proxy with ``token``."""
        config = kubeconfig(path, self.url, self.ca, {"token": token}, namespace)
        text = config.read_text().replace(f"certificate-authority: {self.ca}\n", "")
        config.write_text(text)
        return config

    def inject(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def count(self, method: str, path_regex: str) -> int:
        with self._lock:
            return sum(
                n
                for key, n in self.requests.items()
                if key.startswith(method + " ") and re.search(path_regex, key.split(" ", 1)[1])
            )

    # -- serving --------------------------------------------------------------------------------------
    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        context = ssl.create_default_context(cafile=str(self.ca))
        async with aiohttp.ClientSession(
            # No pool limit (aiohttp's default is 100): followed logs and watches are long-lived, and
            # a proxy that queues requests behind them would time out what it should pass through.
            connector=aiohttp.TCPConnector(ssl=context, limit=0),
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=False,
        ) as session:
            app = web.Application()

            async def handle(request: web.Request) -> web.StreamResponse:
                return await self._handle(session, request)

            app.router.add_route("*", "/{tail:.*}", handle)
            runner = web.AppRunner(app, handle_signals=False)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            self._ready.set()
            await self._stop.wait()
            await runner.cleanup()

    def _take(self, method: str, target: str) -> Fault | None:
        with self._lock:
            self.requests[f"{method} {target.split('?')[0]}"] += 1
            for fault in self.faults:
                if fault.matches(method, target):
                    fault.hits += 1
                    return fault
        return None

    async def _handle(self, session: aiohttp.ClientSession, request: web.Request) -> web.StreamResponse:
        target = request.path_qs
        watch = "watch=true" in request.query_string or "watch=1" in request.query_string
        fault = self._take(request.method, target)
        if fault is not None and fault.kind == "respond":
            return _status_response(fault)
        if fault is not None and fault.kind == "gone-watch" and watch:
            return await _gone_watch(request)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        headers["Accept-Encoding"] = "identity"
        body = await request.read()
        async with session.request(
            request.method, self.upstream + target, headers=headers, data=body or None
        ) as up:
            # accept-encoding is not forwarded, so the body is plain and streamed as it comes.
            passed = {k: v for k, v in up.headers.items() if k.lower() not in _HOP | {"content-encoding"}}
            response = web.StreamResponse(status=up.status, headers=passed)
            events = 0
            try:
                await response.prepare(request)
                async for line in up.content:
                    await response.write(line)
                    events += 1
                    if fault is not None and fault.kind == "cut-watch" and events >= fault.cut_after:
                        # A dropped connection mid-stream, as a restarting API server or load balancer does.
                        assert request.transport is not None
                        request.transport.close()
                        return response
                await response.write_eof()
            except (ConnectionResetError, aiohttp.ClientConnectionResetError):
                pass  # the client closed its watch (operator stopping): nothing left to forward to
            return response


def _status_response(fault: Fault) -> web.Response:
    reasons = {409: "Conflict", 429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable"}
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "code": fault.status,
        "reason": reasons.get(fault.status, "InternalError"),
        "message": f"injected by the test's fault proxy ({fault.status})",
    }
    headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
    return web.json_response(body, status=fault.status, headers=headers)


async def _gone_watch(request: web.Request) -> web.StreamResponse:
    """What kube-apiserver sends when a watch's resourceVersion is too old: one ERROR event, 410."""
    response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    await response.prepare(request)
    event = {
        "type": "ERROR",
        "object": {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": "too old resource version: 1 (2)",
            "reason": "Expired",
            "code": 410,
        },
    }
    await response.write((json.dumps(event) + "\n").encode())
    await response.write_eof()
    return response
