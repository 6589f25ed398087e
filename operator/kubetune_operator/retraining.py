"""The closed loop's decisions (pure): is a breach sustained, may we retrain, what to train, promote?"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Literal

from kubetune.api.adapterdeployment import (
    ActiveAdapter,
    AdapterDeployment,
    MonitoringSpec,
    RetrainingSpec,
    RetrainOutcome,
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
        # The template's absolute minimum was set for its own validation rows; on fresh drifted rows the
        # champion itself may score below it, so the gate is the champion on the same rows (judge()).
        spec.evaluation.min_accuracy = None
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


Verdict = Literal["Promoted", "Rejected", "Inconclusive"]


def chance_margin(rows: int, challenger: float, champion: float) -> float:
    """How far two scores on the same ``rows`` rows can land apart by chance alone: one standard error
    of the difference of two proportions (the scores read as shares of rows), each with one right and
    one wrong answer added (Agresti-Caffo). The plain Wald error is 0 when both adapters are perfect
    (5/5 vs 5/5 would be a certain tie, and a tie with minImprovement 0 was Rejected); this one is not.

    Both adapters answer the same rows and agree on most, so this overstates the paired error: a gate
    on it errs toward waiting for labels. Issue #23 replaces it with a bootstrap interval."""
    if rows <= 0:
        return 0.0
    shrunk = [(share * rows + 1) / (rows + 2) for share in (challenger, champion)]
    return math.sqrt(sum(p * (1 - p) for p in shrunk) / (rows + 2))


def compare(rows: int | None, challenger: float, champion: float, min_improvement: float) -> Verdict:
    """Champion vs challenger on the same held-out rows.

    Promoted: better by more than chance and by at least ``min_improvement``. Rejected: not better by
    ``min_improvement`` even at the top of the chance band. Inconclusive otherwise (a tie or a small
    win or loss on few rows): more labels decide. Unknown ``rows`` judges the scores as they are.

    Example, 28 rows, champion 23/28: 23/28 and 24/28 are Inconclusive (±0.10), 26/28 is Promoted.
    """
    delta = challenger - champion
    margin = chance_margin(rows, challenger, champion) if rows is not None else 0.0
    if delta - margin > 0 and delta >= min_improvement:
        return "Promoted"
    if delta + margin <= min_improvement:
        return "Rejected"
    return "Inconclusive"


@dataclass(frozen=True)
class Judgement:
    """What became of a retraining job, with the numbers behind it."""

    outcome: RetrainOutcome
    challenger: float | None = None
    champion: float | None = None
    rows: int | None = None
    margin: float | None = None


def judge(status: FineTuneJobStatus, metric: str, min_improvement: float) -> Judgement:
    """Outcome of a retraining job from what its trainer reported: the challenger and the champion
    scored on the same validation rows (a failed job keeps its scores, when it had any)."""
    result = status.result
    metrics = result.metrics if result is not None else {}
    challenger, champion = metrics.get(f"after_{metric}"), metrics.get(f"champion_{metric}")
    rows = result.validation_rows if result is not None else None
    if status.phase in ("Failed", "Cancelled"):
        return Judgement("Failed", challenger, champion, rows)
    if status.phase != "Succeeded" or result is None:
        return Judgement("Running" if status.phase in ("ValidatingData", "Running") else "Pending")
    if challenger is None:
        return Judgement("Failed", None, champion, rows)
    if champion is None:  # no champion was scored: nothing to beat
        return Judgement("Promoted", challenger, None, rows)
    margin = chance_margin(rows, challenger, champion) if rows is not None else None
    return Judgement(compare(rows, challenger, champion, min_improvement), challenger, champion, rows, margin)


def judgement_message(job: str, metric: str, j: Judgement, min_improvement: float) -> str:
    """One line a user reads in events and conditions: the verdict, its rows and both scores."""

    def score(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    on = f"on {j.rows} held-out rows" if j.rows is not None else "on the held-out rows"
    band = f" (chance ±{j.margin:.3f})" if j.margin is not None else ""
    numbers = f"{metric} challenger {score(j.challenger)} vs champion {score(j.champion)} {on}{band}"
    why = {
        "Promoted": "beats the champion",
        "Rejected": f"not better than the champion by minImprovement {min_improvement}",
        "Inconclusive": "within chance: the champion keeps serving; the next retrain has more labels",
    }.get(j.outcome, j.outcome.lower())
    return f"{job}: {numbers}: {why}"
