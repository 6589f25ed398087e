"""Prometheus metric names shared by the server (exports), the operator (queries) and the dashboards.

Labels are bounded: adapter (the served model id), version, and for drift ``kind`` — never a request id
or input text.
"""

from __future__ import annotations

from typing import Literal

DRIFT_SCORE = "kubetune_drift_score"  # gauge {adapter, version, kind}
DRIFT_WINDOW = "kubetune_drift_window_size"  # gauge {adapter, version}: inputs in the sliding window
ACCURACY = "kubetune_accuracy"  # gauge {adapter, version}: rolling accuracy from /v1/feedback
FEEDBACK_TOTAL = "kubetune_feedback_total"  # counter {adapter, version, outcome=correct|incorrect}
REQUESTS_TOTAL = "kubetune_requests_total"
REQUEST_LATENCY = "kubetune_request_latency_seconds"

DriftKind = Literal["label_psi", "length_psi", "confidence_drop", "embedding_cosine", "embedding_mmd"]
DRIFT_KINDS: tuple[DriftKind, ...] = (
    "label_psi",
    "length_psi",
    "confidence_drop",
    "embedding_cosine",
    "embedding_mmd",
)
