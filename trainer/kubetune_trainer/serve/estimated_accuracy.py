"""What recent traffic says about a classifier without any label (CBPE, confidence-based performance
estimation, as NannyML does offline), and how much of it is sent to a person.

  kubetune_accuracy_estimated {adapter, version}   mean calibrated max-probability over the last
      `window` answered inputs. With calibrated probabilities (the trainer's temperature, applied by
      the server) a row answered with confidence p is right with probability p, so the mean is an
      unbiased estimate of the accuracy on that traffic; it needs no feedback, so it moves as soon as
      traffic drifts, long before labels arrive.
  kubetune_review_rate {adapter, version}   share of the same recent inputs that met the review
      queue's margin/novelty rule (the thresholds are tuned for a target rate: REVIEW_THRESHOLDS.md).

Per input O(1) (a bounded deque); the gauges are set when /metrics is scraped.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client import Gauge


@dataclass
class RollingMean:
    """Mean of the last `size` values: O(1) per value, the sum (O(size)) only when read.

    >>> m = RollingMean(2)
    >>> m.extend([1.0, 0.0, 0.0])
    >>> m.mean()
    0.0
    """

    size: int
    values: deque[float] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.values = deque(self.values, maxlen=self.size)

    def extend(self, values: Iterable[float]) -> None:
        self.values.extend(values)

    def mean(self) -> float | None:
        return sum(self.values) / len(self.values) if self.values else None


class TrafficEstimates:
    """Windows per (adapter, version) of calibrated confidence and of review-queue membership."""

    def __init__(self, accuracy: Gauge, review_rate: Gauge, window: int) -> None:
        self.accuracy = accuracy
        self.review_rate = review_rate
        self.window = window
        self._confidence: dict[tuple[str, str], RollingMean] = {}
        self._review: dict[tuple[str, str], RollingMean] = {}
        self._lock = threading.Lock()

    def observe(self, adapter: str, version: str, confidences: Iterable[float]) -> None:
        """The calibrated max-probability of each answered input of one request."""
        with self._lock:
            self._confidence.setdefault((adapter, version), RollingMean(self.window)).extend(confidences)

    def observe_review(self, adapter: str, version: str, queued: Iterable[bool]) -> None:
        """Per answered input: did it meet the review rule (whether or not it was new to the queue)."""
        with self._lock:
            self._review.setdefault((adapter, version), RollingMean(self.window)).extend(map(float, queued))

    def estimate(self, adapter: str, version: str) -> float | None:
        window = self._confidence.get((adapter, version))
        return window.mean() if window else None

    def refresh(self) -> None:
        """Set the gauges (called before each /metrics render)."""
        with self._lock:
            for (adapter, version), window in self._confidence.items():
                if (value := window.mean()) is not None:
                    self.accuracy.labels(adapter, version).set(value)
            for (adapter, version), window in self._review.items():
                if (value := window.mean()) is not None:
                    self.review_rate.labels(adapter, version).set(value)

    def forget(self, adapter: str, version: str) -> None:
        """An unloaded version stops being exported."""
        with self._lock:
            self._confidence.pop((adapter, version), None)
            self._review.pop((adapter, version), None)
        for gauge in (self.accuracy, self.review_rate):
            with contextlib.suppress(KeyError):
                gauge.remove(adapter, version)
