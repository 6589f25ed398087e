"""Feedback store, metrics and the error edge, without a model."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from kubetune_trainer.serve.errors import (
    InvalidRequestError,
    ModelNotFoundError,
    RequestIdNotFoundError,
    install_error_handlers,
)
from kubetune_trainer.serve.feedback import FeedbackEvent, FeedbackStore, Prediction
from kubetune_trainer.serve.metrics import ServeMetrics
from pydantic import BaseModel


def sample(metrics: ServeMetrics, name: str, labels: dict[str, str]) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_feedback_rolling_window_and_listeners() -> None:
    metrics = ServeMetrics()
    store = FeedbackStore(metrics, window=2)
    seen: list[FeedbackEvent] = []
    store.add_listener(seen.append)
    store.remember("r1", Prediction("triage", "v1", ("billing", "login")))
    assert store.record("r1", 0, "billing", None).correct
    assert not store.record("r1", 1, "billing", None).correct
    assert store.record("r1", 1, None, True).correct  # window 2: [False, True]
    assert store.accuracy("triage", "v1") == (0.5, 2)
    labels = {"adapter": "triage", "version": "v1"}
    assert sample(metrics, "kubetune_feedback_total", labels) == 3
    assert sample(metrics, "kubetune_feedback_correct_total", labels) == 2
    assert sample(metrics, "kubetune_accuracy", labels) == 0.5
    assert [e.predicted for e in seen] == ["billing", "login", "login"]
    with pytest.raises(RequestIdNotFoundError):
        store.record("nope", 0, None, True)
    with pytest.raises(InvalidRequestError):
        store.record("r1", 5, None, True)


def test_track_counts_requests_errors_and_in_flight() -> None:
    metrics = ServeMetrics()
    labels = {"adapter": "a", "version": "v1"}
    with metrics.track(("a", "v1")):
        assert sample(metrics, "kubetune_requests_in_flight", labels) == 1
    with pytest.raises(ValueError), metrics.track(("a", "v1")):
        raise ValueError("boom")
    assert sample(metrics, "kubetune_requests_total", labels) == 2
    assert sample(metrics, "kubetune_errors_total", labels) == 1
    assert sample(metrics, "kubetune_requests_in_flight", labels) == 0
    assert sample(metrics, "kubetune_request_duration_seconds_count", labels) == 2


class Body(BaseModel):
    n: int


def test_errors_are_openai_shaped_and_counted_once() -> None:
    app = FastAPI()
    counted: list[None] = []
    install_error_handlers(app, lambda: counted.append(None))
    metrics = ServeMetrics()

    @app.post("/tracked")
    async def tracked() -> None:
        with metrics.track(("a", "v1")):  # counted under its adapter: the handler must not count again
            raise ModelNotFoundError("gone meanwhile", "model")

    @app.post("/missing")
    async def missing() -> None:
        raise ModelNotFoundError("model 'x' is not served here", "model")

    @app.post("/typed")
    async def typed(body: Body) -> dict[str, int]:
        return {"n": body.n}

    @app.post("/boom")
    async def boom() -> None:
        raise RuntimeError("secret detail")

    client = TestClient(app, raise_server_exceptions=False)
    r = client.post("/missing")
    assert r.status_code == 404
    assert r.json() == {
        "error": {
            "message": "model 'x' is not served here",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }
    r = client.post("/typed", json={"n": "many"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "n"
    r = client.post("/typed", content=b"{", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = client.post("/boom")
    assert (
        r.status_code == 500 and "secret detail" not in r.text and r.json()["error"]["type"] == "server_error"
    )
    assert len(counted) == 4, "each refusal raised before an adapter is known is counted once"
    assert client.post("/tracked").status_code == 404 and len(counted) == 4
    assert sample(metrics, "kubetune_errors_total", {"adapter": "a", "version": "v1"}) == 1
