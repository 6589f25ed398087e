"""Prometheus metrics, labelled only by adapter name and version (bounded: never request id or text).

Names come from kubetune.api.telemetry, the contract the operator and dashboards query.

Requests whose model is unknown count under adapter="unknown", version="".
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from kubetune.api import telemetry as names
from kubetune.api.telemetry import LABELS
from kubetune_trainer.serve.errors import mark_counted

UNKNOWN = ("unknown", "")
# Seconds; CPU generation of 64 tokens takes seconds, a GPU classify a few milliseconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class ServeMetrics:
    """One registry per app (no module globals), rendered by GET /metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.before_render: list[Callable[[], None]] = []  # gauges computed per scrape (drift scores)
        r = self.registry
        self.requests = Counter(names.REQUESTS_TOTAL, "Inference requests.", LABELS, registry=r)
        self.errors = Counter(names.ERRORS_TOTAL, "Requests answered with an error.", LABELS, registry=r)
        self.latency = Histogram(
            names.REQUEST_LATENCY,
            "Request latency.",
            LABELS,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(names.IN_FLIGHT, "Requests being served.", LABELS, registry=r)
        self.tokens = Counter(names.TOKENS_TOTAL, "Prompt plus generated tokens.", LABELS, registry=r)
        self.feedback = Counter(names.FEEDBACK_TOTAL, "Feedback events received.", LABELS, registry=r)
        self.feedback_correct = Counter(
            names.FEEDBACK_CORRECT_TOTAL, "Feedback saying 'correct'.", LABELS, registry=r
        )
        self.rolling_accuracy = Gauge(
            names.ACCURACY, "Accuracy over the rolling feedback window.", LABELS, registry=r
        )
        self.drift_score = Gauge(
            names.DRIFT_SCORE,
            "Drift of the sliding window from the reference.",
            (*LABELS, "kind"),
            registry=r,
        )
        self.drift_window = Gauge(names.DRIFT_WINDOW, "Inputs in the drift window.", LABELS, registry=r)
        self.queue_length = Gauge(
            names.QUEUE_LENGTH, "Inference requests admitted (waiting or computing).", registry=r
        )
        self.shed = Counter(names.SHED_TOTAL, "Requests refused with 429 (maxQueued).", LABELS, registry=r)
        self.cancelled = Counter(
            names.CANCELLED_TOTAL, "Requests whose client left or timed out.", LABELS, registry=r
        )
        self.review_queue = Gauge(
            names.REVIEW_QUEUE, "Inputs waiting in the review queue.", ("adapter",), registry=r
        )
        self.review_dropped = Counter(
            names.REVIEW_DROPPED_TOTAL,
            "Inputs not queued for review (too_long) or dropped from a full queue (queue_full).",
            ("adapter", "reason"),
            registry=r,
        )
        self.accuracy_estimated = Gauge(
            names.ACCURACY_ESTIMATED,
            "Accuracy estimated without labels: mean calibrated max-probability of recent inputs.",
            LABELS,
            registry=r,
        )
        self.review_rate = Gauge(
            names.REVIEW_RATE, "Share of recent inputs meeting the review queue's rule.", LABELS, registry=r
        )
        self.runtime = Gauge(
            names.RUNTIME_INFO,
            "1 per served adapter name: the engine running it (kubetune, or the fronted engine's owned_by).",
            ("adapter", "engine"),
            registry=r,
        )

    @contextmanager
    def track(self, labels: tuple[str, str]) -> Iterator[None]:
        """Count one request: in flight while the block runs, latency on exit, an error if it raised."""
        self.requests.labels(*labels).inc()
        self.in_flight.labels(*labels).inc()
        start = time.perf_counter()
        try:
            yield
        except BaseException as err:
            self.errors.labels(*labels).inc()
            mark_counted(err)
            raise
        finally:
            self.latency.labels(*labels).observe(time.perf_counter() - start)
            self.in_flight.labels(*labels).dec()

    def set_runtime(self, engine: str, adapters: Iterable[str]) -> None:
        """kubetune_runtime_info: exactly one series per adapter name served now."""
        self.runtime.clear()
        for name in adapters:
            self.runtime.labels(name, engine).set(1)

    def render(self) -> bytes:
        for refresh in self.before_render:
            refresh()
        return generate_latest(self.registry)
