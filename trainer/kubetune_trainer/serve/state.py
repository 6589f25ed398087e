"""What the endpoints share: config, registry, model thread, batcher, metrics, feedback, readiness."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from fastapi import Request

from kubetune_trainer.serve.adapters import AdapterRegistry
from kubetune_trainer.serve.batching import Batcher, ModelWorker
from kubetune_trainer.serve.config import ServeConfig
from kubetune_trainer.serve.errors import NotReadyError
from kubetune_trainer.serve.feedback import FeedbackStore
from kubetune_trainer.serve.metrics import ServeMetrics


@dataclass
class ServerState:
    config: ServeConfig
    registry: AdapterRegistry
    worker: ModelWorker
    batcher: Batcher
    metrics: ServeMetrics
    feedback: FeedbackStore
    ready: bool = False  # base + every declared adapter loaded and warmed up
    draining: bool = False  # SIGTERM received
    startup_error: str | None = None
    on_fatal: Callable[[], None] = field(default=lambda: None)  # main.py stops the server

    def require_ready(self) -> None:
        if self.startup_error:
            raise NotReadyError(f"the server failed to start: {self.startup_error}")
        if not self.ready:
            raise NotReadyError("the base model and declared adapters are still loading; retry shortly")


def server_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.kubetune
    return state
