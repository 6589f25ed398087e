"""AdapterDeployment.spec.monitoring: drift, accuracy and estimated-accuracy triggers, the review
queue and the fresh-data sample the retraining loop reads."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from kubetune.api.common import (
    ApiModel,
    FreshDataUri,
    PrometheusUrl,
)
from kubetune.api.rules import Checked, Rule, single_line
from kubetune.api.telemetry import DRIFT_KINDS, DRIFT_MAX, DriftKind

FIELD_NAME = Rule(
    "must be a metadata field name: letters, digits, '_', '-' and '.' (no spaces); a name that never "
    "matches a request's field would keep the data it was meant to drop",
    require=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$",
)
MetadataField = Annotated[
    str, Checked("A request metadata field name.", 128, single_line(), FIELD_NAME, min_length=1)
]


def _drift_out_of_range(kind: str, high: float) -> str:
    return (
        f"monitoring.drift.threshold must be below {high:g} for kind {kind} (its largest score): the "
        "trigger could never fire"
    )


class DriftTrigger(ApiModel):
    """Retrain when this drift score stays above ``threshold`` for ``forSeconds``."""

    kind: Annotated[DriftKind, Field(description="Which drift score: " + ", ".join(DRIFT_KINDS) + ".")] = (
        "embedding_cosine"
    )
    threshold: Annotated[
        float,
        Field(
            description="Score above which the input has drifted; below the kind's largest score "
            "(confidence_drop: 1, embedding_cosine and embedding_mmd: 2).",
            gt=0,
            le=100,
        ),
    ] = 0.2
    for_seconds: Annotated[int, Field(description="How long the breach must last.", ge=0, le=7 * 86400)] = 600

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": f"!has(self.kind) || self.kind != '{kind}' || !has(self.threshold) || "
                    f"self.threshold < {high}",
                    "message": _drift_out_of_range(kind, high),
                }
                for kind, high in DRIFT_MAX.items()
            ]
        }
    }

    @model_validator(mode="after")
    def _can_fire(self) -> DriftTrigger:
        high = DRIFT_MAX.get(self.kind)
        if high is not None and self.threshold >= high:
            raise ValueError(_drift_out_of_range(self.kind, high))
        return self


class AccuracyTrigger(ApiModel):
    """Retrain when rolling accuracy from /v1/feedback stays below ``threshold`` for ``forSeconds``."""

    threshold: Annotated[float, Field(description="Accuracy below which the model degraded.", ge=0, le=1)] = (
        0.85
    )
    for_seconds: Annotated[int, Field(description="How long the breach must last.", ge=0, le=7 * 86400)] = 900


class EstimatedAccuracyTrigger(ApiModel):
    """Retrain when the label-free estimate of accuracy (kubetune_accuracy_estimated: the mean calibrated
    confidence over the drift window, CBPE) stays below ``threshold`` for ``forSeconds``. It moves as
    soon as traffic drifts, long before feedback labels arrive; it needs windowSize-style traffic
    (minSamples inputs in the window), not labels."""

    threshold: Annotated[
        float,
        Field(description="Estimated accuracy below which the model is taken to have degraded.", gt=0, lt=1),
    ]
    for_seconds: Annotated[int, Field(description="How long the breach must last.", ge=0, le=7 * 86400)] = 900


class ReviewSpec(ApiModel):
    """Which served inputs go to the review queue for a person to label (kept beside the fresh data).

    Defaults tuned in benchmarks/REVIEW_THRESHOLDS.md for a 10% review rate on 160 tickets the example
    adapter never saw (not on its validation rows, whose novelty is 0 by construction), on calibrated
    probabilities (the trainer's temperature): on held-out sets they queue 2 of 120 ordinary tickets,
    5 of 80 boundary tickets (3 of its 5 mistakes) and 21 of 40 es/en tickets (10 of its 11 mistakes).
    kubetune_review_rate{adapter,version} shows the share queued on live traffic.
    """

    enabled: Annotated[bool, Field(description="Queue uncertain and novel inputs for a person to label.")] = (
        True
    )
    margin_threshold: Annotated[
        float,
        Field(
            description="Queue an input whose top-1 minus top-2 class probability is below this "
            "(0: never for uncertainty).",
            ge=0,
            le=1,
        ),
    ] = 0.75
    novelty_threshold: Annotated[
        float,
        Field(
            description="Queue an input whose cosine distance to the nearest reference embedding of the "
            "served version is above this (2: never for novelty).",
            ge=0,
            le=2,
        ),
    ] = 0.65
    max_items: Annotated[
        int,
        Field(description="Waiting items kept per adapter; past it the oldest are dropped.", ge=1, le=10_000),
    ] = 1000
    clusters: Annotated[
        int,
        Field(
            description="Embedding clusters the labelling order spreads over (uncertainty + diversity).",
            ge=1,
            le=100,
        ),
    ] = 8


class FreshDataSpec(ApiModel):
    """Where servers keep a rolling sample of recent inputs and feedback labels (the retraining data)."""

    uri: FreshDataUri
    max_rows: Annotated[
        int, Field(description="Cap of kept rows per server (oldest dropped).", ge=100, le=10_000_000)
    ] = 20000
    drop_fields: Annotated[
        list[MetadataField],
        Field(description="Request metadata fields never stored (PII).", max_length=64),
    ] = []
    hash_fields: Annotated[
        list[MetadataField],
        Field(description="Request metadata fields stored only as a salted sha256 (PII).", max_length=64),
    ] = []
    review: Annotated[
        ReviewSpec,
        Field(description="The review queue of uncertain and novel inputs, labelled on /admin/review."),
    ] = ReviewSpec()


FRESH_TRAIN_FILE = "train.jsonl"
FRESH_HOLDOUT_FILE = "holdout.jsonl"
# Share of labelled texts (by a hash of the text) the servers keep out of training, for the retrain gate.
FRESH_HOLDOUT_PERCENT = 20


def fresh_data_uris(fresh_uri: str, adapter: str) -> tuple[str, str]:
    """Where servers write labelled traffic for ``adapter``: (train rows, held-out rows).

    Rows are split by a hash of the input so the same text always lands on the same side.
    """
    base = f"{fresh_uri.rstrip('/')}/{adapter}"
    return f"{base}/{FRESH_TRAIN_FILE}", f"{base}/{FRESH_HOLDOUT_FILE}"


ESTIMATE_NEEDS = (
    "monitoring.estimatedAccuracy needs monitoring.prometheusUrl (the trigger reads "
    "kubetune_accuracy_estimated from Prometheus)"
)


SAMPLES_FIT_WINDOW = (
    "monitoring.minSamples must not exceed monitoring.windowSize: a drift window holds at most "
    "windowSize inputs, so the drift trigger could never fire"
)


class MonitoringSpec(ApiModel):
    """Drift and accuracy watching: in-process in every server, read back from Prometheus."""

    prometheus_url: PrometheusUrl | None = None
    interval_seconds: Annotated[
        int, Field(description="How often the operator evaluates triggers.", ge=5, le=86400)
    ] = 60
    window_size: Annotated[
        int, Field(description="Recent inputs per drift window in each server.", ge=50, le=100_000)
    ] = 500
    min_samples: Annotated[
        int,
        Field(
            description="Window inputs and feedback events needed before a trigger may fire.",
            ge=1,
            le=10_000_000,
        ),
    ] = 100
    drift: Annotated[DriftTrigger, Field(description="Input drift trigger.")] = DriftTrigger()
    accuracy: Annotated[AccuracyTrigger, Field(description="Accuracy trigger.")] = AccuracyTrigger()
    estimated_accuracy: Annotated[
        EstimatedAccuracyTrigger | None,
        Field(description="Estimated-accuracy trigger (no labels needed); off when unset."),
    ] = None
    fresh_data: Annotated[
        FreshDataSpec | None,
        Field(description="Rolling sample of traffic + feedback labels kept for retraining."),
    ] = None

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.estimatedAccuracy) || has(self.prometheusUrl)",
                    "message": ESTIMATE_NEEDS,
                },
                {"rule": "self.minSamples <= self.windowSize", "message": SAMPLES_FIT_WINDOW},
            ]
        }
    }

    @model_validator(mode="after")
    def _samples_fit_window(self) -> MonitoringSpec:
        if self.min_samples > self.window_size:
            raise ValueError(SAMPLES_FIT_WINDOW)
        return self

    @model_validator(mode="after")
    def _estimate_needs_prometheus(self) -> MonitoringSpec:
        if self.estimated_accuracy is not None and self.prometheus_url is None:
            raise ValueError(ESTIMATE_NEEDS)
        return self
