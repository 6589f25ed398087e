"""Canary rollout decisions (pure): how many canary pods, when a step ends, and whether the canary
is worse than the champion (then it is rolled back and never retried)."""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass
from typing import Literal

from kubetune.api.adapterdeployment import AdapterDeployment
from kubetune.api.adapterdeployment_status import CanaryStatus
from kubetune.api.telemetry import ACCURACY, DRIFT_SCORE, ERRORS_TOTAL, REQUESTS_TOTAL

# Tolerances: a canary is "worse" only by more than noise.
ERROR_RATIO_MARGIN = 0.02
ACCURACY_MARGIN = 0.02
NOT_READY_GRACE_SECONDS = 600


@dataclass(frozen=True)
class VersionHealth:
    """Per-version readings over the step's pause (None: no data)."""

    error_ratio: float | None = None
    accuracy: float | None = None
    drift: float | None = None


def canary_replicas(total: int, weight: int) -> int:
    return max(1, math.ceil(total * weight / 100))


def _elapsed(since: str, now: str) -> float:
    parse = lambda ts: datetime.datetime.fromisoformat(ts.replace("Z", "+00:00"))  # noqa: E731
    return (parse(now) - parse(since)).total_seconds()


Decision = Literal["wait", "judge", "rollback-unready"]


def step_decision(
    ad: AdapterDeployment, canary: CanaryStatus, ready: bool, created_at: str, now: str
) -> Decision:
    """Wait for the step's pods and pause; then judge. Pods never ready within the grace: roll back."""
    pause = ad.spec.rollout.steps[canary.step].pause_seconds
    if not ready:
        return "rollback-unready" if _elapsed(created_at, now) > pause + NOT_READY_GRACE_SECONDS else "wait"
    if canary.step_started_at is None or _elapsed(canary.step_started_at, now) < pause:
        return "wait"
    return "judge"


def evidence_overdue(ad: AdapterDeployment, canary: CanaryStatus, now: str) -> bool:
    """A canary with no metrics at all is judged anyway once the grace after its pause is over
    (a deployment nobody sends traffic to must not hold a rollout forever)."""
    if canary.step_started_at is None:
        return False
    pause = ad.spec.rollout.steps[canary.step].pause_seconds
    return _elapsed(canary.step_started_at, now) > pause + NOT_READY_GRACE_SECONDS


def health_queries(adapter: str, version: str, window_seconds: int, drift_kind: str) -> dict[str, str]:
    sel = f'adapter="{adapter}",version="{version}"'
    w = f"{max(window_seconds, 60)}s"
    return {
        "error_ratio": (
            f"sum(increase({ERRORS_TOTAL}{{{sel}}}[{w}])) / sum(increase({REQUESTS_TOTAL}{{{sel}}}[{w}]))"
        ),
        "accuracy": f"avg({ACCURACY}{{{sel}}})",
        "drift": f'avg({DRIFT_SCORE}{{{sel},kind="{drift_kind}"}})',
    }


def compare(champion: VersionHealth, canary: VersionHealth, drift_threshold: float) -> str | None:
    """Why the canary is worse than the champion, or None. Missing data never condemns a canary."""
    if (
        canary.error_ratio is not None
        and canary.error_ratio > (champion.error_ratio or 0.0) + ERROR_RATIO_MARGIN
    ):
        return f"canary error ratio {canary.error_ratio:.3f} > champion {champion.error_ratio or 0.0:.3f}"
    if (
        canary.accuracy is not None
        and champion.accuracy is not None
        and (canary.accuracy < champion.accuracy - ACCURACY_MARGIN)
    ):
        return f"canary accuracy {canary.accuracy:.3f} < champion {champion.accuracy:.3f}"
    if (
        canary.drift is not None
        and canary.drift > drift_threshold
        and (champion.drift is None or champion.drift <= drift_threshold)
    ):
        return f"canary drift {canary.drift:.3f} > {drift_threshold} while the champion's is within it"
    return None
