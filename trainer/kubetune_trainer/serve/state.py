"""What the endpoints share: config, registry, model thread, batcher, metrics, feedback, readiness."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from fastapi import Request

from kubetune_trainer.serve.adapters import AdapterRegistry, LoadedAdapter
from kubetune_trainer.serve.admission import Admission
from kubetune_trainer.serve.batching import Batcher, ModelWorker
from kubetune_trainer.serve.config import ServeConfig
from kubetune_trainer.serve.drift import DriftMonitor
from kubetune_trainer.serve.errors import NotReadyError, WrongTaskError
from kubetune_trainer.serve.estimated_accuracy import TrafficEstimates
from kubetune_trainer.serve.feedback import FeedbackStore
from kubetune_trainer.serve.fresh import FreshDataWriter, InputMemory
from kubetune_trainer.serve.metrics import ServeMetrics
from kubetune_trainer.serve.review import ReviewQueue
from kubetune_trainer.serve.tokenizing import TokenizerThread


@dataclass
class ServerState:
    config: ServeConfig
    registry: AdapterRegistry
    worker: ModelWorker
    batcher: Batcher
    metrics: ServeMetrics
    feedback: FeedbackStore
    admission: Admission  # shared by every task of the server: maxQueued bounds the pod
    tokenize: TokenizerThread  # request text -> token ids, off the event loop
    drift: DriftMonitor | None = None  # sequence-classification with monitoring.enabled
    fresh: FreshDataWriter | None = None  # monitoring.freshDataUri set
    inputs: InputMemory | None = None  # request id -> inputs, only while fresh data is kept
    review: ReviewQueue | None = None  # uncertain/novel inputs for a person, beside the fresh data
    estimates: TrafficEstimates | None = None  # accuracy without labels, review rate (with drift)
    ready: bool = False  # base + every declared adapter loaded and warmed up
    draining: bool = False  # SIGTERM received
    startup_error: str | None = None
    on_fatal: Callable[[], None] = field(default=lambda: None)  # main.py stops the server

    def require_ready(self) -> None:
        if self.startup_error:
            raise NotReadyError(f"the server failed to start: {self.startup_error}")
        if not self.ready:
            raise NotReadyError("the base model and declared adapters are still loading; retry shortly")

    def watch(self, loaded: LoadedAdapter) -> None:
        """Start drift monitoring of a freshly loaded version (model thread: may read the volume)."""
        if self.drift is not None:
            try:
                folder = self.registry.adapter_dir(loaded.uri)
            except Exception as err:  # monitoring never fails a load
                logging.getLogger("kubetune.serve").warning("drift disabled for %s: %s", loaded.model_id, err)
                return
            self.drift.load_reference(loaded.name, loaded.version, folder)

    def unwatch(self, unloaded: list[LoadedAdapter]) -> None:
        for adapter in unloaded:
            if self.drift is not None:
                self.drift.forget(adapter.name, adapter.version)
            if self.estimates is not None:
                self.estimates.forget(adapter.name, adapter.version)


def server_state(request: Request) -> ServerState:
    """The first (top-level) task's state; with one task, the server's."""
    state: ServerState = request.app.state.kubetune
    return state


def all_states(request: Request) -> list[ServerState]:
    """Every task's state, the top-level task first."""
    states: list[ServerState] = request.app.state.kubetune_tasks
    return states


def task_state(request: Request, task: str, hint: str) -> ServerState:
    """The state serving `task`; WrongTaskError (400) naming the endpoint to use otherwise."""
    for state in all_states(request):
        if state.config.task == task:
            return state
    raise WrongTaskError(hint)
