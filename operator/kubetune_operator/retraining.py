"""The closed loop's decisions (pure): is a breach sustained, may we retrain, what to train, promote?"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Literal

from kubetune.api.adapterdeployment import AdapterDeployment, RetrainingSpec
from kubetune.api.adapterdeployment_status import ActiveAdapter, RetrainOutcome, RetrainRecord
from kubetune.api.common import ConditionStatus
from kubetune.api.finetunejob import DataSource, ExtraSource, FineTuneJobSpec, FineTuneJobStatus
from kubetune.api.monitoring import FRESH_HOLDOUT_PERCENT, MonitoringSpec, fresh_data_uris
from kubetune_operator.builders.meta import LABEL_ADAPTERDEPLOYMENT, child_name, owner_reference
from kubetune_operator.paired_difference import PairedDifference, paired_difference
from kubetune_operator.status import EventType

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
    estimated_accuracy: float | None = None
    estimated_accuracy_sustained: float | None = None


@dataclass(frozen=True)
class Breach:
    kind: Literal["drift", "accuracy", "estimated_accuracy", "manual"]
    message: str

    @property
    def reason(self) -> str:
        """The Drifted condition's reason: DriftBreach, AccuracyBreach, EstimatedAccuracyBreach..."""
        return "".join(word.capitalize() for word in self.kind.split("_")) + "Breach"


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
    est, sustained = monitoring.estimated_accuracy, r.estimated_accuracy_sustained
    if est is not None and enough_inputs and sustained is not None and sustained < est.threshold:
        return Breach(
            "estimated_accuracy",
            f"estimated accuracy {sustained:.3f} < {est.threshold} for {est.for_seconds}s "
            f"({int(r.window or 0)} inputs in window, no labels needed)",
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
    """The retraining FineTuneJob: the recipe + fresh labelled traffic (oversampled), judged against the
    serving adapter (champion/challenger) on the recipe's validation rows + the fresh hold-out."""
    spec = template.model_copy(deep=True)
    monitoring, retraining = ad.spec.monitoring, ad.spec.retraining
    if monitoring.fresh_data is not None:
        train_uri, holdout_uri = fresh_data_uris(monitoring.fresh_data.uri, ad.metadata.name)
        spec.dataset.extra = [
            *spec.dataset.extra,
            ExtraSource(uri=train_uri, weight=retraining.fresh_data_weight),
        ]
        # Judged on the recipe's validation rows plus every fresh hold-out row so far (the union),
        # both adapters row by row (judge()).
        spec.dataset.validation_extra = [*spec.dataset.validation_extra, DataSource(uri=holdout_uri)]
        # The template's absolute minimum was set for its own validation rows; with fresh drifted rows
        # the champion itself may score below it, so the gate is the champion on the same rows.
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
        "estimatedAccuracy": readings.estimated_accuracy,
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


Verdict = Literal["Promoted", "Rejected", "Inconclusive", "WaitingForLabels"]


def verdict(evidence: PairedDifference, retraining: RetrainingSpec) -> Verdict:
    """The gate on the paired interval of (challenger - champion) accuracy on the same held-out rows.

    WaitingForLabels below ``gate.minRows`` rows, whatever the scores; Promoted when the interval's lower
    bound is above ``minImprovement`` (with the default 0: better than the champion beyond chance);
    Rejected when its upper bound is below it (clearly not better by that much); Inconclusive when it
    straddles it (a tie or a small win or loss: the champion keeps serving, more labels decide).
    """
    if evidence.rows < retraining.gate.min_rows:
        return "WaitingForLabels"
    if evidence.lower > retraining.min_improvement:
        return "Promoted"
    if evidence.upper < retraining.min_improvement:
        return "Rejected"
    return "Inconclusive"


@dataclass(frozen=True)
class Judgement:
    """What became of a retraining job, with the numbers behind it."""

    outcome: RetrainOutcome
    challenger: float | None = None
    champion: float | None = None
    rows: int | None = None
    evidence: PairedDifference | None = None


def judge(status: FineTuneJobStatus, metric: str, retraining: RetrainingSpec) -> Judgement:
    """Outcome of a retraining job from what its trainer reported: the challenger and the champion
    scored on the same validation rows, row by row (a failed job keeps its scores, when it had any)."""
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
    if result.paired is None:  # no row-by-row table: no evidence either way
        return Judgement("Inconclusive", challenger, champion, rows)
    t = result.paired
    evidence = paired_difference(t.both, t.challenger_only, t.champion_only, t.neither)
    return Judgement(verdict(evidence, retraining), challenger, champion, evidence.rows, evidence)


def labels_wanted(rows: int, min_rows: int) -> int:
    """Labelled inputs still to collect before the gate can decide: only the servers' hold-out share of
    the labels joins the gate's rows.

    >>> labels_wanted(28, 50)
    110
    """
    return math.ceil(max(0, min_rows - rows) * 100 / FRESH_HOLDOUT_PERCENT)


def judgement_message(job: str, metric: str, j: Judgement, retraining: RetrainingSpec) -> str:
    """One line a user reads in events and conditions: the verdict, n, the difference and its interval."""

    def score(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    numbers = f"{metric} challenger {score(j.challenger)} vs champion {score(j.champion)}"
    e = j.evidence
    if e is not None:
        numbers += (
            f" on {e.rows} held-out rows: difference {e.difference:+.3f}, "
            f"{e.confidence:.0%} interval [{e.lower:+.3f}, {e.upper:+.3f}]"
        )
    elif j.rows is not None:
        numbers += f" on {j.rows} held-out rows"
    minimum, min_rows = retraining.min_improvement, retraining.gate.min_rows
    why = {
        "Promoted": "beats the champion" + (f" by more than minImprovement {minimum}" if minimum else ""),
        "Rejected": f"not better than the champion by minImprovement {minimum}",
        "Inconclusive": f"the interval straddles minImprovement {minimum}: the champion keeps serving; "
        "the next retrain has more labels"
        if e is not None
        else "the trainer reported no row-by-row results: the champion keeps serving",
        "WaitingForLabels": f"fewer than retraining.gate.minRows {min_rows}: the champion keeps "
        f"serving; label about {labels_wanted(j.rows or 0, min_rows)} more inputs on the "
        f"review queue ({FRESH_HOLDOUT_PERCENT}% of them are held out for this gate), then retrain",
    }.get(j.outcome, j.outcome.lower())
    return f"{job}: {numbers}: {why}"


@dataclass(frozen=True)
class OutcomeReport:
    """How a judged outcome shows: the Promoted condition, the reason of the event and of the
    Retraining condition, and the event's type."""

    promoted: ConditionStatus
    promoted_reason: str
    reason: str
    event_type: EventType


# The one table the handlers read: conditions and events per judged outcome, and (below) the
# kubetune_retrains_total outcome per event reason. Inconclusive and WaitingForLabels are no failure.
JUDGED: dict[str, OutcomeReport] = {
    "Promoted": OutcomeReport("True", "BeatChampion", "Promoted", "Normal"),
    "Inconclusive": OutcomeReport("False", "Inconclusive", "Inconclusive", "Normal"),
    "WaitingForLabels": OutcomeReport("False", "WaitingForLabels", "WaitingForLabels", "Normal"),
    "Rejected": OutcomeReport("False", "NotBetter", "NotBetter", "Warning"),
    "Failed": OutcomeReport("False", "RetrainFailed", "RetrainFailed", "Warning"),
}
COUNTED_EVENTS: dict[str, str] = {
    "Retraining": "Triggered",
    **{report.reason: outcome for outcome, report in JUDGED.items()},
}
