"""Prometheus metric names shared by the server (exports), the operator (queries) and the dashboards.

Labels are bounded: adapter (the served model id), version, and for drift ``kind`` — never a request id
or input text. The server's ServeMetrics and the drift monitor export exactly these names.
"""

from __future__ import annotations

from typing import Literal

LABELS = ("adapter", "version")

DRIFT_SCORE = "kubetune_drift_score"  # gauge {adapter, version, kind}
DRIFT_WINDOW = "kubetune_drift_window_size"  # gauge {adapter, version}: inputs in the sliding window
ACCURACY = "kubetune_accuracy"  # gauge {adapter, version}: rolling accuracy from /v1/feedback
ACCURACY_ESTIMATED = "kubetune_accuracy_estimated"  # gauge {adapter, version}: mean calibrated confidence
REVIEW_RATE = "kubetune_review_rate"  # gauge {adapter, version}: share of recent inputs meeting review rule
FEEDBACK_TOTAL = "kubetune_feedback_total"  # counter {adapter, version}: feedback events
FEEDBACK_CORRECT_TOTAL = "kubetune_feedback_correct_total"  # counter {adapter, version}
REQUESTS_TOTAL = "kubetune_requests_total"  # counter {adapter, version}
ERRORS_TOTAL = "kubetune_errors_total"  # counter {adapter, version}
REQUEST_LATENCY = "kubetune_request_duration_seconds"  # histogram {adapter, version}
IN_FLIGHT = "kubetune_requests_in_flight"  # gauge {adapter, version}
TOKENS_TOTAL = "kubetune_tokens_total"  # counter {adapter, version}
QUEUE_LENGTH = "kubetune_queue_length"  # gauge: inference requests admitted, waiting or computing
SHED_TOTAL = "kubetune_requests_shed_total"  # counter {adapter, version}: answered 429 (maxQueued)
CANCELLED_TOTAL = "kubetune_requests_cancelled_total"  # counter {adapter, version}: client gone/timeout
RUNTIME_INFO = "kubetune_runtime_info"  # gauge {adapter, engine} = 1: "kubetune", or the engine fronted
REVIEW_QUEUE = "kubetune_review_queue_length"  # gauge {adapter}: inputs waiting for a person's label
REVIEW_DROPPED_TOTAL = "kubetune_review_dropped_total"  # counter {adapter, reason}: too_long, queue_full

DriftKind = Literal["label_psi", "length_psi", "confidence_drop", "embedding_cosine", "embedding_mmd"]
DRIFT_KINDS: tuple[DriftKind, ...] = (
    "label_psi",
    "length_psi",
    "confidence_drop",
    "embedding_cosine",
    "embedding_mmd",
)
# The largest score of each bounded kind (the PSIs are unbounded): a threshold at or above it never fires.
# confidence_drop is a difference of probabilities, embedding_cosine a cosine distance, embedding_mmd a
# squared MMD with an RBF kernel (k <= 1, so at most 2).
DRIFT_MAX: dict[DriftKind, float] = {"confidence_drop": 1.0, "embedding_cosine": 2.0, "embedding_mmd": 2.0}
