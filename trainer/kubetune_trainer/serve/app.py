"""The FastAPI app factory: lifespan (eager loading, batcher), request ids, health, models, metrics."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kubetune_trainer.serve import admin, review_routes, routes
from kubetune_trainer.serve.adapters import AdapterRegistry, Target
from kubetune_trainer.serve.batching import Batcher, ModelWorker
from kubetune_trainer.serve.config import ServeConfig
from kubetune_trainer.serve.drift import DriftMonitor
from kubetune_trainer.serve.errors import error_body, install_error_handlers
from kubetune_trainer.serve.feedback import FeedbackStore
from kubetune_trainer.serve.fresh import FreshDataWriter, InputMemory
from kubetune_trainer.serve.metrics import ServeMetrics
from kubetune_trainer.serve.review import ReviewQueue
from kubetune_trainer.serve.state import ServerState, server_state

log = logging.getLogger("kubetune.serve")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestIdMiddleware:
    """Every response carries x-request-id: the client's (if well-formed) or a new one."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = given or uuid.uuid4().hex
        header = (b"x-request-id", request_id.encode("latin-1"))
        if given and not REQUEST_ID.match(given):
            body = error_body(
                "x-request-id: use 1-128 characters of A-Z a-z 0-9 . _ : -",
                "invalid_request_error",
                "invalid_request_id",
            )
            response = JSONResponse(body, status_code=400, headers={"x-request-id": uuid.uuid4().hex})
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        await self.app(scope, receive, send_with_id)


async def load_declared(state: ServerState) -> None:
    """Eager start-up: base, then every declared adapter, each warmed up; only then ready."""
    try:
        started = time.perf_counter()
        if state.registry.model is None:
            await state.worker.call(state.registry.load_base)
        if state.config.task == "causal-lm":
            await state.worker.call(state.registry.warm_up, Target(state.config.base_model_id, None))
        for spec in state.config.adapters:
            loaded = await state.worker.call(state.registry.load, spec)
            await state.worker.call(state.watch, loaded)
        state.ready = True
        log.info("ready: %d adapters in %.1f s", len(state.config.adapters), time.perf_counter() - started)
    except Exception as err:  # a pod that cannot load its declared adapters must not turn ready
        log.exception("start-up failed")
        state.startup_error = f"{type(err).__name__}: {err}"
        state.on_fatal()


def create_app(config: ServeConfig, registry: AdapterRegistry | None = None) -> FastAPI:
    """The server app. Pass a `registry` whose base is already loaded to skip loading it again."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state: ServerState = app.state.kubetune
        state.batcher.start()
        loading = asyncio.create_task(load_declared(state))
        yield
        loading.cancel()
        await state.batcher.stop()
        state.worker.shutdown()
        if state.drift is not None:
            state.drift.shutdown()

    app = FastAPI(title="kubetune serve", lifespan=lifespan)
    reg = registry or AdapterRegistry(config)
    worker = ModelWorker()
    metrics = ServeMetrics()
    app.state.kubetune = ServerState(
        config=config,
        registry=reg,
        worker=worker,
        metrics=metrics,
        batcher=Batcher(reg, worker, config.max_batch_size, config.batch_wait_ms, config.max_input_tokens),
        feedback=FeedbackStore(metrics, config.feedback_window),
        **monitoring_parts(config, metrics),
    )
    install_error_handlers(app)
    app.add_middleware(RequestIdMiddleware)
    app.include_router(routes.router)
    app.include_router(admin.router)
    app.include_router(review_routes.router)
    app.add_api_route("/healthz", healthz, methods=["GET"])
    app.add_api_route("/readyz", readyz, methods=["GET"])
    app.add_api_route("/v1/models", list_models, methods=["GET"])
    app.add_api_route("/metrics", metrics_endpoint, methods=["GET"])
    return app


def monitoring_parts(config: ServeConfig, metrics: ServeMetrics) -> dict[str, Any]:
    """Drift monitor, fresh-data writer and input memory, each only where the config asks for it."""
    monitoring = config.monitoring
    if config.task != "sequence-classification" or not monitoring.enabled:
        return {}
    parts: dict[str, Any] = {
        "drift": DriftMonitor(
            metrics.drift_score,
            metrics.drift_window,
            monitoring.window_size,
            mmd_every=max(10, monitoring.window_size // 5),
        )
    }
    if monitoring.fresh_data_uri:
        parts["fresh"] = FreshDataWriter(
            Path(config.locate(monitoring.fresh_data_uri)), monitoring.fresh_max_rows
        )
        parts["inputs"] = InputMemory()
        review = monitoring.review
        if review.enabled:
            parts["review"] = ReviewQueue(
                parts["fresh"].directory,
                metrics.review_queue,
                review.margin_threshold,
                review.novelty_threshold,
                review.max_items,
                review.clusters,
            )
    return parts


async def healthz(request: Request) -> JSONResponse:
    s = server_state(request)
    if s.startup_error:
        return JSONResponse({"status": "failed", "error": s.startup_error}, status_code=500)
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    s = server_state(request)
    ready = s.ready and not s.draining and not s.startup_error
    reason = "draining" if s.draining else s.startup_error or ("ready" if s.ready else "loading")
    return JSONResponse(
        {"ready": ready, "reason": reason, "adapters": len(s.registry.served())},
        status_code=200 if ready else 503,
    )


async def list_models(request: Request) -> dict[str, Any]:
    """Each served adapter version with the sha256 of its weights, so a probe can check what is served."""
    s = server_state(request)
    data: list[dict[str, Any]] = []
    if s.config.task == "causal-lm" and s.ready:
        data.append(
            {
                "id": s.config.base_model_id,
                "object": "model",
                "created": 0,
                "owned_by": "kubetune",
                "baseModel": s.config.base_model.name,
                "task": s.config.task,
            }
        )
    for a in s.registry.served():
        data.append(
            {
                "id": a.model_id,
                "object": "model",
                "created": int(a.loaded_at),
                "owned_by": "kubetune",
                "root": a.name,
                "parent": s.config.base_model_id,
                "name": a.name,
                "version": a.version,
                "digest": a.digest,
                "uri": a.uri,
                "task": s.config.task,
                "default": s.registry.default_version(a.name) == a.version,
                **({"labels": list(a.labels)} if a.labels else {}),
            }
        )
    return {"object": "list", "data": data}


async def metrics_endpoint(request: Request) -> Response:
    return Response(server_state(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)
