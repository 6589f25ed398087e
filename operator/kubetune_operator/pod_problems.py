"""Why a validation or training pod cannot make progress, in the pod's own words (pure).

A pod that the scheduler cannot place (a missing or unbound PVC, no node with a free GPU) or whose
container cannot start (a missing Secret or ConfigMap, an image that cannot be pulled) stays
Pending or Running for ever without the Job ever failing: its Job would read "active" until
``activeDeadlineSeconds``. What the scheduler and the kubelet already wrote on the pod is the
explanation a user needs, so the status repeats it verbatim.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MAX_MESSAGE = 1024

# Container waiting reasons that do not clear on their own (the kubelet's words).
STUCK_WAITING_REASONS = frozenset(
    {
        "CreateContainerConfigError",  # a Secret/ConfigMap (or a key of one) the pod refers to is missing
        "CreateContainerError",
        "ErrImagePull",
        "ImagePullBackOff",
        "ErrImageNeverPull",
        "InvalidImageName",
        "CrashLoopBackOff",
        "RunContainerError",
    }
)

# The kubelet alternates ErrImagePull and ImagePullBackOff on every retry: one problem, one event.
_FAMILY = {"ErrImagePull": "ImagePull", "ImagePullBackOff": "ImagePull"}


@dataclass(frozen=True)
class PodProblem:
    """A pod that is stuck: ``reason`` is the scheduler's or the kubelet's own reason."""

    pod: str
    reason: str
    message: str

    @property
    def text(self) -> str:
        """``pod x-validate-abc: 0/3 nodes are available: persistentvolumeclaim "kubetune-data" not found``"""
        return f"pod {self.pod}: {self.message}"[:MAX_MESSAGE]


def problem_family(reason: str) -> str:
    """Reasons that are one problem seen at different moments share a family (for event dedupe)."""
    return _FAMILY.get(reason, reason)


def pod_problem(pod: dict[str, Any]) -> PodProblem | None:
    """Why ``pod`` cannot run, or None when nothing is stuck (it runs, waits normally, or ended)."""
    meta, status = pod.get("metadata", {}), pod.get("status") or {}
    if status.get("phase") in ("Succeeded", "Failed") or meta.get("deletionTimestamp"):
        return None
    name = meta.get("name", "?")
    containers = [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]
    for container in containers:
        waiting = (container.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason in STUCK_WAITING_REASONS:
            detail = (waiting.get("message") or "").strip() or reason
            return PodProblem(name, reason, f"container {container.get('name', '?')}: {reason}: {detail}")
    for cond in status.get("conditions") or []:
        scheduled = cond.get("type") == "PodScheduled" and cond.get("status") == "False"
        if scheduled and cond.get("reason") == "Unschedulable":
            return PodProblem(name, "Unschedulable", (cond.get("message") or "unschedulable").strip())
    return None


def first_problem(pods: list[dict[str, Any]]) -> PodProblem | None:
    """The newest stuck pod's problem (a retry's pod speaks for the Job now)."""
    newest_first = sorted(
        pods, key=lambda p: p.get("metadata", {}).get("creationTimestamp") or "", reverse=True
    )
    for pod in newest_first:
        if (problem := pod_problem(pod)) is not None:
            return problem
    return None
