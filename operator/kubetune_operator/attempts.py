"""A Job's attempts as the Job controller counts them: failures against backoffLimit, preemptions
that do not count, and the retry a failed attempt leads to (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubetune_operator.termination import result_from_pod, terminated_state

JOB_DEFAULT_BACKOFF_LIMIT = 6  # batch/v1's default, for a Job that does not say
MAX_DETAIL = 300


def job_condition(job: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for cond in (job or {}).get("status", {}).get("conditions", []) or []:
        if cond.get("type") == type_ and cond.get("status") == "True":
            return dict(cond)
    return None


def is_disrupted(pod: dict[str, Any]) -> bool:
    """Preempted, evicted or drained: the pod carries a DisruptionTarget condition."""
    return any(
        c.get("type") == "DisruptionTarget" and c.get("status") == "True"
        for c in pod.get("status", {}).get("conditions", []) or []
    )


def preemption_count(pods: list[dict[str, Any]]) -> int:
    return sum(1 for p in pods if is_disrupted(p))


def failed_pods(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pods that failed by their own fault (not preempted), oldest finish first."""
    failed = [p for p in pods if p.get("status", {}).get("phase") == "Failed" and not is_disrupted(p)]
    return sorted(failed, key=lambda p: (terminated_state(p) or {}).get("finishedAt") or "")


def failure_count(pods: list[dict[str, Any]]) -> int:
    return len(failed_pods(pods))


@dataclass(frozen=True)
class Retry:
    """Attempt ``failed`` of ``attempts`` failed and the Job controller will start another."""

    failed: int
    attempts: int
    detail: str

    @property
    def message(self) -> str:
        """``attempt 2/4 failed: CUDA out of memory; retrying``"""
        why = f": {self.detail}" if self.detail else ""
        return f"attempt {self.failed}/{self.attempts} failed{why}; retrying"


def retry_of(job: dict[str, Any] | None, pods: list[dict[str, Any]]) -> Retry | None:
    """The retry in progress, from the Job's own counters (``status.failed``, ``spec.backoffLimit``)
    and the newest failed pod's termination message; None when nothing failed or the Job has given up."""
    if job is None or any(job_condition(job, t) for t in ("Complete", "Failed", "FailureTarget")):
        return None
    failed = job.get("status", {}).get("failed") or 0
    limit = job.get("spec", {}).get("backoffLimit")
    limit = JOB_DEFAULT_BACKOFF_LIMIT if limit is None else limit
    if failed < 1 or failed > limit:  # nothing failed yet / the Job's Failed verdict is coming
        return None
    return Retry(failed, limit + 1, _last_failure(pods))


def _last_failure(pods: list[dict[str, Any]]) -> str:
    """The newest failed pod's reason in one line: a crashed trainer's log tail ends with the error."""
    failed = failed_pods(pods)
    if not failed:
        return ""
    result = result_from_pod(failed[-1])
    state = terminated_state(failed[-1]) or {}
    text = (result.reason if result is not None else None) or f"exit code {state.get('exitCode', '?')}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines else text)[:MAX_DETAIL]
