"""Operator metrics for Prometheus (bounded labels only).

Per-object series carry ``namespace``/``name`` of the custom resource (bounded by the objects that
exist; ``forget_finetunejob`` drops them on deletion). When a ServiceMonitor scrapes the operator,
set ``honorLabels: true`` so the CR's ``namespace`` is not renamed ``exported_namespace``.
"""

from __future__ import annotations

from contextlib import suppress
from typing import Literal, get_args

from prometheus_client import Counter, Gauge

from kubetune.api.finetunejob import Phase

RECONCILES = Counter("kubetune_operator_reconciles", "FineTuneJob reconcile passes", ["result"])

FINETUNEJOB_PROGRESS = Gauge(
    "kubetune_finetunejob_progress_ratio",
    "Training steps done / total steps of a FineTuneJob (0..1).",
    ["namespace", "name"],
)
FINETUNEJOB_LOSS = Gauge(
    "kubetune_finetunejob_loss", "Latest training loss of a FineTuneJob.", ["namespace", "name"]
)
FINETUNEJOB_PHASE = Gauge(
    "kubetune_finetunejob_phase",
    "1 for the FineTuneJob's current status.phase, 0 for every other phase.",
    ["namespace", "name", "phase"],
)

RetrainOutcome = Literal["Triggered", "Promoted", "Rejected", "Inconclusive", "WaitingForLabels", "Failed"]
RETRAINS = Counter(
    "kubetune_retrains",
    "Retraining events of an AdapterDeployment: Triggered when the FineTuneJob is created, then one "
    "of Promoted, Rejected (not better than the champion), Inconclusive (the interval straddles "
    "minImprovement), WaitingForLabels (fewer held-out rows than gate.minRows) or Failed.",
    ["namespace", "adapterdeployment", "outcome"],
)

PHASES: tuple[Phase, ...] = get_args(Phase)


def record_finetunejob(
    namespace: str, name: str, phase: Phase | None, progress: str | None, loss: float | None
) -> None:
    """Export a FineTuneJob's status: phase one-hot, ``progress`` ("step/total") as a ratio, loss.

    Progress and loss keep their last value while the status has none (e.g. after success).
    """
    for candidate in PHASES:
        FINETUNEJOB_PHASE.labels(namespace, name, candidate).set(1 if candidate == phase else 0)
    ratio = _ratio(progress)
    if ratio is not None:
        FINETUNEJOB_PROGRESS.labels(namespace, name).set(ratio)
    if loss is not None:
        FINETUNEJOB_LOSS.labels(namespace, name).set(loss)


def forget_finetunejob(namespace: str, name: str) -> None:
    """Drop a deleted FineTuneJob's series so they do not linger at their last value."""
    for gauge in (FINETUNEJOB_PROGRESS, FINETUNEJOB_LOSS):
        with suppress(KeyError):  # never exported (no progress yet)
            gauge.remove(namespace, name)
    for candidate in PHASES:
        with suppress(KeyError):
            FINETUNEJOB_PHASE.remove(namespace, name, candidate)


def _ratio(progress: str | None) -> float | None:
    """``status.progress`` as a fraction.

    >>> _ratio("30/120"), _ratio("3/0"), _ratio(None)
    (0.25, None, None)
    """
    step, _, total = (progress or "").partition("/")
    if not (step.isdigit() and total.isdigit()) or int(total) == 0:
        return None
    return min(int(step) / int(total), 1.0)
