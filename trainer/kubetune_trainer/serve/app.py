"""The FastAPI app factory: lifespan (eager loading, batcher), request ids, health, models, metrics."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kubetune_trainer.serve import admin, classify_route, engine_routes, lora_protocol, review_routes, routes
from kubetune_trainer.serve.adapters import AdapterRegistry, LoadedAdapter, Target
from kubetune_trainer.serve.admission import Admission
from kubetune_trainer.serve.batching import Batcher, ModelWorker
from kubetune_trainer.serve.config import ServeConfig
from kubetune_trainer.serve.drift import DriftMonitor
from kubetune_trainer.serve.engine_client import EngineClient
from kubetune_trainer.serve.engine_sync import EngineSync
from kubetune_trainer.serve.errors import error_body, install_error_handlers
from kubetune_trainer.serve.estimated_accuracy import TrafficEstimates
from kubetune_trainer.serve.feedback import FeedbackStore
from kubetune_trainer.serve.limits import BodyLimitMiddleware
from kubetune_trainer.serve.metrics import UNKNOWN, ServeMetrics
from kubetune_trainer.serve.review import fresh_and_review
from kubetune_trainer.serve.router_metrics import RouterMetrics
from kubetune_trainer.serve.state import ServerState, all_states, server_state
from kubetune_trainer.serve.tokenizing import TokenizerThread

log = logging.getLogger("kubetune.serve")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestIdMiddleware:
    """Every response carries x-request-id: the client's (if well-formed) or a new one."""

    def __init__(self, app: ASGIApp, count: Callable[[], None]) -> None:
        self.app = app
        self.count = count  # a refused id is an error answer like any other

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
            self.count()
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
    config = state.config
    try:
        started = time.perf_counter()
        if state.registry.model is None:
            log.info("%s: loading base model %s", config.task, config.base_model.name)
            await state.worker.call(state.registry.load_base)
            log.info("%s: base model loaded in %.1f s", config.task, time.perf_counter() - started)
        if config.task == "causal-lm":
            await state.worker.call(state.registry.warm_up, Target(config.base_model_id, None))
        for i, spec in enumerate(config.adapters, start=1):
            log.info(
                "%s: loading adapter %d/%d %s@%s",
                config.task,
                i,
                len(config.adapters),
                spec.name,
                spec.version,
            )
            loaded = await state.worker.call(state.registry.load, spec)
            await state.worker.call(state.watch, loaded)
        state.ready = True
        log.info(
            "%s: loaded %d adapters in %.1f s",
            config.task,
            len(config.adapters),
            time.perf_counter() - started,
        )
    except Exception as err:  # a pod that cannot load its declared adapters must not turn ready
        log.exception("start-up failed")
        state.startup_error = f"{type(err).__name__}: {err}"
        state.on_fatal()


async def load_all(states: list[ServerState]) -> None:
    """Load every task, one after the other (transformers' loading puts weights on the meta device
    through process-wide switches: two loads at once corrupt each other); log "ready" once /readyz
    says 200."""
    started = time.perf_counter()
    for state in states:
        await load_declared(state)
    if all(state.ready for state in states) and not states[0].draining:
        ids = sorted({m for state in states for m in state.config.model_ids()})
        log.info(
            "ready: /readyz is 200 after %.1f s; serving %s", time.perf_counter() - started, ", ".join(ids)
        )


def create_app(config: ServeConfig, registry: AdapterRegistry | None = None) -> FastAPI:
    """The server app. Pass a `registry` whose base is already loaded to skip loading it again (it
    serves the top-level task)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for state in states:
            state.batcher.start()
        log.info(
            "loading %d task(s): /healthz answers now; inference and the readiness probe wait for the models",
            len(states),
        )
        loading = asyncio.create_task(engine.run() if engine else load_all(states))  # engine: no model here
        yield
        loading.cancel()
        if engine:
            await engine.client.close()
        for state in states:
            await state.batcher.stop()
            state.worker.shutdown()
            state.tokenize.shutdown()
            if state.drift is not None:
                state.drift.shutdown()

    app = FastAPI(title="kubetune serve", lifespan=lifespan)
    metrics = ServeMetrics()
    admission = Admission(config.max_queued, metrics)
    states = [
        task_server(task, registry if i == 0 else None, metrics, admission)
        for i, task in enumerate(config.task_configs())
    ]
    app.state.kubetune = states[0]
    app.state.kubetune_tasks = states
    engine = EngineSync(states[0], EngineClient(config.engine)) if config.engine else None
    app.state.kubetune_engine = engine
    if engine is None:  # what vLLM-built routers read (in front of an engine, the engine's own count)
        metrics.before_render.append(RouterMetrics(metrics.registry, states).refresh)
    metrics.before_render.append(lambda: metrics.set_runtime(*runtime_labels(states, engine)))
    unknown_error = metrics.errors.labels(*UNKNOWN).inc
    install_error_handlers(app, unknown_error)
    app.add_middleware(BodyLimitMiddleware, limit=config.max_body_bytes, count=unknown_error)
    app.add_middleware(RequestIdMiddleware, count=unknown_error)  # outermost: every answer has the id
    if engine:  # first: its inference routes and /v1/models answer instead of the local model's
        app.include_router(engine_routes.router)
    app.include_router(routes.router)
    app.include_router(classify_route.router)
    app.include_router(admin.router)
    app.include_router(lora_protocol.router)  # vLLM's /v1/load_lora_adapter, /v1/unload_lora_adapter
    app.include_router(review_routes.router)
    app.add_api_route("/healthz", healthz, methods=["GET"])
    app.add_api_route("/readyz", readyz, methods=["GET"])
    app.add_api_route("/v1/models", list_models, methods=["GET"])
    app.add_api_route("/metrics", metrics_endpoint, methods=["GET"])
    return app


def runtime_labels(states: list[ServerState], engine: EngineSync | None) -> tuple[str, list[str]]:
    """(engine, adapter names served now) for kubetune_runtime_info: this server with its loaded
    adapters, or the engine it fronts as that engine names itself (vLLM: "vllm") with the names its
    aliases route; no series until the engine has answered."""
    if engine is None:
        return "kubetune", sorted({a.name for s in states for a in s.registry.served()})
    return (engine.engine_owner, sorted(engine.alias)) if engine.engine_owner else ("", [])


def task_server(
    config: ServeConfig, registry: AdapterRegistry | None, metrics: ServeMetrics, admission: Admission
) -> ServerState:
    """One task's registry, model thread and batcher; metrics and admission are the server's."""
    reg = registry or AdapterRegistry(config)
    worker = ModelWorker()
    return ServerState(
        config=config,
        registry=reg,
        worker=worker,
        metrics=metrics,
        admission=admission,
        tokenize=TokenizerThread(reg),
        batcher=Batcher(reg, worker, config.max_batch_size, config.batch_wait_ms, config.max_input_tokens),
        feedback=FeedbackStore(metrics, config.feedback_window),
        **monitoring_parts(config, metrics),
    )


def monitoring_parts(config: ServeConfig, metrics: ServeMetrics) -> dict[str, Any]:
    """Drift monitor, fresh-data writer and input memory, each only where the config asks for it."""
    monitoring = config.monitoring
    if config.task != "sequence-classification" or not monitoring.enabled:
        return {}
    drift = DriftMonitor(
        metrics.drift_score,
        metrics.drift_window,
        monitoring.window_size,
        mmd_every=max(10, monitoring.window_size // 5),
    )
    metrics.before_render.append(drift.refresh)
    estimates = TrafficEstimates(metrics.accuracy_estimated, metrics.review_rate, monitoring.window_size)
    metrics.before_render.append(estimates.refresh)
    return {"drift": drift, "estimates": estimates, **fresh_and_review(config, metrics)}


async def healthz(request: Request) -> JSONResponse:
    failed = [s.startup_error for s in all_states(request) if s.startup_error]
    if failed:
        return JSONResponse({"status": "failed", "error": "; ".join(failed)}, status_code=500)
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    states = all_states(request)
    draining = server_state(request).draining
    failed = "; ".join(s.startup_error for s in states if s.startup_error)
    loaded = all(s.ready for s in states)
    ready = loaded and not draining and not failed
    reason = "draining" if draining else failed or ("ready" if loaded else "loading")
    adapters = sum(len(s.registry.served()) for s in states)
    return JSONResponse(
        {"ready": ready, "reason": reason, "adapters": adapters}, status_code=200 if ready else 503
    )


async def list_models(request: Request) -> dict[str, Any]:
    """Every id a client may send: each bare adapter name (its newest version), each name@version with
    the sha256 of its weights (a probe checks what is served), and each causal-lm base."""
    data: list[dict[str, Any]] = []
    for s in all_states(request):
        if s.config.task == "causal-lm" and s.ready:
            data.append(
                {
                    "id": s.config.base_model_id,
                    "object": "model",
                    "created": 0,
                    "owned_by": "kubetune",
                    "root": s.config.base_model.name,  # as vLLM: the base's path or hub name
                    "parent": None,
                    "baseModel": s.config.base_model.name,
                    "task": s.config.task,
                }
            )
        served = s.registry.served()
        for a in served:
            entry = model_entry(s, a)
            if s.registry.default_version(a.name) == a.version:
                data.append({**entry, "id": a.name, "aliasOf": a.model_id})
            data.append(entry)
    return {"object": "list", "data": data}


def model_entry(s: ServerState, a: LoadedAdapter) -> dict[str, Any]:
    return {
        "id": a.model_id,
        "object": "model",
        "created": int(a.loaded_at),
        "owned_by": "kubetune",
        "root": a.uri,  # as vLLM lists a LoRA: root its weights' location, parent the base model id
        "parent": s.config.base_model_id,
        "name": a.name,
        "version": a.version,
        "digest": a.digest,
        "uri": a.uri,
        "task": s.config.task,
        "baseModel": s.config.base_model.name,
        "default": s.registry.default_version(a.name) == a.version,
        **({"labels": list(a.labels)} if a.labels else {}),
    }


async def metrics_endpoint(request: Request) -> Response:
    return Response(server_state(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)
