"""Feedback on served answers: which request, was it right. Kept in memory, counted in metrics.

Predictions are remembered for the last `PREDICTION_MEMORY` requests so that feedback can name a
request id only. Drift monitoring (a later issue) subscribes through `add_listener`.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from kubetune_trainer.serve.errors import InvalidRequestError, RequestIdNotFoundError
from kubetune_trainer.serve.metrics import ServeMetrics

PREDICTION_MEMORY = 10_000


@dataclass(frozen=True)
class Prediction:
    adapter: str
    version: str
    outputs: tuple[str, ...]  # predicted labels (classify) or generated texts, by input index


@dataclass(frozen=True)
class FeedbackEvent:
    request_id: str
    index: int
    adapter: str
    version: str
    predicted: str
    true_label: str | None
    correct: bool


class FeedbackStore:
    def __init__(self, metrics: ServeMetrics, window: int) -> None:
        self.metrics = metrics
        self.window = window
        self._predictions: OrderedDict[str, Prediction] = OrderedDict()
        self._recent: dict[tuple[str, str], deque[bool]] = {}
        self._listeners: list[Callable[[FeedbackEvent], None]] = []

    def add_listener(self, listener: Callable[[FeedbackEvent], None]) -> None:
        """Called with every accepted feedback event (the drift monitor's seam)."""
        self._listeners.append(listener)

    def remember(self, request_id: str, prediction: Prediction) -> None:
        self._predictions[request_id] = prediction
        self._predictions.move_to_end(request_id)
        while len(self._predictions) > PREDICTION_MEMORY:
            self._predictions.popitem(last=False)

    def knows(self, request_id: str) -> bool:
        return request_id in self._predictions

    def record(self, request_id: str, index: int, label: str | None, correct: bool | None) -> FeedbackEvent:
        """Judge a remembered prediction by a true label or a correct/incorrect verdict."""
        prediction = self._predictions.get(request_id)
        if prediction is None:
            raise RequestIdNotFoundError(
                f"request id {request_id!r} is unknown (only the last {PREDICTION_MEMORY} requests are kept)",
                "request_id",
            )
        if not 0 <= index < len(prediction.outputs):
            raise InvalidRequestError(
                f"index {index}: that request had {len(prediction.outputs)} outputs", "index"
            )
        predicted = prediction.outputs[index]
        verdict = correct if correct is not None else (label == predicted)
        event = FeedbackEvent(
            request_id, index, prediction.adapter, prediction.version, predicted, label, verdict
        )
        labels = (prediction.adapter, prediction.version)
        recent = self._recent.setdefault(labels, deque(maxlen=self.window))
        recent.append(verdict)
        self.metrics.feedback.labels(*labels).inc()
        if verdict:
            self.metrics.feedback_correct.labels(*labels).inc()
        self.metrics.rolling_accuracy.labels(*labels).set(sum(recent) / len(recent))
        for listener in self._listeners:
            listener(event)
        return event

    def accuracy(self, adapter: str, version: str) -> tuple[float | None, int]:
        """(rolling accuracy or None, events in the window)."""
        recent = self._recent.get((adapter, version))
        return (sum(recent) / len(recent), len(recent)) if recent else (None, 0)
