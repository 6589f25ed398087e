"""Which pod of a FineTuneJob to read, and what its trainer reported on exit (pure).

Label keys and the container name mirror the operator's builders (``kubetune_operator.builders``);
the plugin does not import the operator, which users of the plugin need not have installed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from kubetune.api.finetunejob import TrainResult

LABEL_FINETUNEJOB = "kubetune.dev/finetunejob"
LABEL_COMPONENT = "app.kubernetes.io/component"
TRAIN, VALIDATE = "train", "validate-data"
TRAINER_CONTAINER = "trainer"


def pod_selector(job_name: str, component: str) -> str:
    return f"{LABEL_FINETUNEJOB}={job_name},{LABEL_COMPONENT}={component}"


def newest_pod(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The most recently created pod (a retry supersedes the attempt before it)."""

    def created(pod: dict[str, Any]) -> tuple[str, str]:
        meta = pod.get("metadata", {})
        return meta.get("creationTimestamp") or "", meta.get("name") or ""

    return max(pods, key=created, default=None)


def trainer_terminated(pod: dict[str, Any]) -> dict[str, Any] | None:
    """The trainer container's ``state.terminated`` (or its last termination, after a restart)."""
    for status in pod.get("status", {}).get("containerStatuses", []) or []:
        if status.get("name") == TRAINER_CONTAINER:
            for source in (status.get("state"), status.get("lastState")):
                terminated = (source or {}).get("terminated")
                if isinstance(terminated, dict):
                    return terminated
    return None


def failed_pod(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The newest pod whose trainer exited non-zero (or that failed as a whole)."""

    def failed(pod: dict[str, Any]) -> bool:
        terminated = trainer_terminated(pod) or {}
        return pod.get("status", {}).get("phase") == "Failed" or (terminated.get("exitCode") or 0) != 0

    def finished(pod: dict[str, Any]) -> str:
        return (trainer_terminated(pod) or {}).get("finishedAt") or ""

    candidates = sorted((p for p in pods if failed(p)), key=finished)
    return candidates[-1] if candidates else None


@dataclass(frozen=True)
class Termination:
    """A parsed termination message: the TrainResult, or the raw text of a crashed trainer."""

    pod: str
    exit_code: int | None
    reason: str | None  # the container's reason, e.g. Error, OOMKilled
    finished_at: str | None
    result: TrainResult | None
    raw: str


def termination_of(pod: dict[str, Any]) -> Termination | None:
    """What the pod's trainer reported; a message that is not a TrainResult (FallbackToLogsOnError
    puts the log tail there) is kept as ``raw`` with no ``result``."""
    terminated = trainer_terminated(pod)
    if terminated is None:
        return None
    raw = (terminated.get("message") or "").strip()
    result: TrainResult | None = None
    if raw.startswith("{"):
        try:
            result = TrainResult.model_validate(json.loads(raw))
        except (json.JSONDecodeError, ValidationError):
            result = None
    return Termination(
        pod=pod.get("metadata", {}).get("name", "?"),
        exit_code=terminated.get("exitCode"),
        reason=terminated.get("reason"),
        finished_at=terminated.get("finishedAt"),
        result=result,
        raw=raw,
    )
