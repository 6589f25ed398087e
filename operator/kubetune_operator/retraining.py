"""The closed loop's decisions (pure): is a breach sustained, may we retrain, what to train, promote?"""

from __future__ import annotations

import datetime
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

from kubetune.api.adapterdeployment import (
    ActiveAdapter,
    AdapterDeployment,
    MonitoringSpec,
    RetrainingSpec,
    RetrainRecord,
    fresh_data_uris,
)
from kubetune.api.finetunejob import DataSource, ExtraSource, FineTuneJobSpec, FineTuneJobStatus
from kubetune_operator.builders.meta import LABEL_ADAPTERDEPLOYMENT, child_name, owner_reference

TRIGGERED_BY = "kubetune.dev/triggered-by"
# Set by a human or the Argo CD `retrain-now` action to an RFC 3339 time; honoured once per value.
RETRAIN_REQUESTED = "kubetune.dev/retrain-requested"


@dataclass(frozen=True)
class Readings:
    """What Prometheus said about the active version (None: no data)."""

    drift: float | None = None
    drift_sustained: float | None = None
    window: float | None = None
    accuracy: float | None = None
    accuracy_sustained: float | None = None
    feedback: float | None = None


@dataclass(frozen=True)
class Breach:
    kind: Literal["drift", "accuracy", "manual"]
    message: str


def find_breach(monitoring: MonitoringSpec, r: Readings) -> Breach | None:
    """A sustained breach backed by enough samples, or None. Missing data never counts as a breach."""
    enough_inputs = r.window is not None and r.window >= monitoring.min_samples
    drift = monitoring.drift
    if enough_inputs and r.drift_sustained is not None and r.drift_sustained > drift.threshold:
        return Breach(
            "drift",
            f"{drift.kind} drift {r.drift_sustained:.3f} > {drift.threshold} for "
            f"{drift.for_seconds}s ({int(r.window or 0)} inputs in window)",
        )
    enough_feedback = r.feedback is not None and r.feedback >= monitoring.min_samples
    acc = monitoring.accuracy
    if enough_feedback and r.accuracy_sustained is not None and r.accuracy_sustained < acc.threshold:
        return Breach(
            "accuracy",
            f"accuracy {r.accuracy_sustained:.3f} < {acc.threshold} for "
            f"{acc.for_seconds}s ({int(r.feedback or 0)} feedback events)",
        )
    return None


def _parse(ts: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(ts.replace("Z", "+00:00"))


def retrain_blocker(
    retraining: RetrainingSpec, records: list[RetrainRecord], now: str, manual: bool = False
) -> str | None:
    """Why no retrain may start now (in progress, cooldown, daily budget), or None.

    A manual request (retrain-now) skips ``enabled`` and the cooldown, never the daily budget.
    """
    if not retraining.enabled and not manual:
        return "retraining.enabled is false"
    if any(r.outcome in ("Pending", "Running") for r in records):
        return "a retraining FineTuneJob is already running"
    t = _parse(now)
    if records and not manual:
        since = (t - _parse(records[-1].created_at)).total_seconds()
        if since < retraining.cooldown_seconds:
            return f"cooldown: {int(retraining.cooldown_seconds - since)}s left"
    today = [r for r in records if (t - _parse(r.created_at)).total_seconds() < 86400]
    if len(today) >= retraining.max_per_day:
        return f"daily budget spent: {len(today)}/{retraining.max_per_day} retrains in 24h"
    return None


def retrain_name(adapter: str, active_version: str, records: list[RetrainRecord]) -> str:
    """Deterministic per (active version, attempt): a restart mid-creation finds the same name."""
    attempt = 1 + sum(1 for r in records if r.fine_tune_job.startswith(_prefix(adapter, active_version)))
    return f"{_prefix(adapter, active_version)}{attempt}"


def _prefix(adapter: str, version: str) -> str:
    """``<adapter>-retrain-<hash>-``, shortened so that the attempt number (<= 3 digits: records are
    bounded) still fits a 63-character FineTuneJob name (the CRD refuses longer ones)."""
    suffix = f"retrain-{hashlib.sha256(version.encode()).hexdigest()[:6]}-"
    return child_name(adapter, suffix + "000").removesuffix("000")


def build_retrain_job(
    ad: AdapterDeployment,
    owner: dict[str, Any],
    template: FineTuneJobSpec,
    active: ActiveAdapter,
    breach: Breach,
    readings: Readings,
    name: str,
    now: str,
) -> dict[str, Any]:
    """The retraining FineTuneJob: the recipe + fresh labelled traffic (oversampled), judged on fresh
    held-out rows against the serving adapter (champion/challenger)."""
    spec = template.model_copy(deep=True)
    monitoring, retraining = ad.spec.monitoring, ad.spec.retraining
    if monitoring.fresh_data is not None:
        train_uri, holdout_uri = fresh_data_uris(monitoring.fresh_data.uri, ad.metadata.name)
        spec.dataset.extra = [
            *spec.dataset.extra,
            ExtraSource(uri=train_uri, weight=retraining.fresh_data_weight),
        ]
        spec.dataset.validation = DataSource(uri=holdout_uri)
    spec.evaluation.champion_uri = active.uri
    spec.output.uri = f"{template.output.uri.rstrip('/')}/{name}"
    spec.suspend = retraining.approval == "manual"
    trigger = {
        "breach": breach.kind,
        "message": breach.message,
        "champion": active.version,
        "at": now,
        "drift": readings.drift,
        "accuracy": readings.accuracy,
    }
    return {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {
            "name": name,
            "namespace": ad.metadata.namespace,
            "labels": {
                LABEL_ADAPTERDEPLOYMENT: ad.metadata.name,
                "app.kubernetes.io/managed-by": "kubetune-operator",
            },
            "annotations": {TRIGGERED_BY: json.dumps(trigger, sort_keys=True)},
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": FineTuneJobSpec.model_validate(spec.model_dump()).wire(),
    }


def judge(
    status: FineTuneJobStatus, metric: str, min_improvement: float
) -> tuple[Literal["Pending", "Running", "Promoted", "Rejected", "Failed"], float | None, float | None]:
    """Outcome of a retraining job: promote only a challenger that beats the champion on the same rows."""
    if status.phase in ("Failed", "Cancelled"):
        return "Failed", None, None
    if status.phase != "Succeeded" or status.result is None:
        return ("Running" if status.phase in ("ValidatingData", "Running") else "Pending"), None, None
    metrics = status.result.metrics
    challenger = metrics.get(f"after_{metric}")
    champion = metrics.get(f"champion_{metric}")
    if challenger is None:
        return "Failed", None, champion
    if champion is None or challenger >= champion + min_improvement:
        return "Promoted", challenger, champion
    return "Rejected", challenger, champion
