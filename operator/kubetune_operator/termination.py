"""Read the trainer's final report from a pod's termination message (pure)."""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from kubetune.api.finetunejob import TrainResult
from kubetune_operator.builders.training import TRAINER_CONTAINER

MAX_REASON = 1024


def terminated_state(pod: dict[str, Any]) -> dict[str, Any] | None:
    for status in pod.get("status", {}).get("containerStatuses", []) or []:
        if status.get("name") == TRAINER_CONTAINER:
            state = status.get("state", {}).get("terminated")
            return state if isinstance(state, dict) else None
    return None


def result_from_pod(pod: dict[str, Any]) -> TrainResult | None:
    """The TrainResult a terminated trainer wrote, or its log tail as ``reason`` when it crashed."""
    state = terminated_state(pod)
    if state is None:
        return None
    message = (state.get("message") or "").strip()
    if not message:
        code = state.get("exitCode")
        return TrainResult(reason=f"trainer exited with code {code} ({state.get('reason', 'unknown')})")
    try:
        return TrainResult.model_validate(json.loads(message))
    except (json.JSONDecodeError, ValidationError, TypeError):
        # FallbackToLogsOnError: the message is the last log lines of a crashed trainer.
        return TrainResult(reason=message[-MAX_REASON:])


def newest_result(pods: list[dict[str, Any]]) -> TrainResult | None:
    """The result of the most recently finished pod (a retry's report supersedes an earlier one)."""
    ordered = sorted(pods, key=lambda p: (terminated_state(p) or {}).get("finishedAt") or "", reverse=True)
    for pod in ordered:
        result = result_from_pod(pod)
        if result is not None:
            return result
    return None
