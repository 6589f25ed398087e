"""Read training progress from the trainer's structured JSON log lines (pure).

Trainer pods have no Kubernetes API rights, so they report the only way a pod can: stdout (progress,
read here from the pod log) and the termination message (the final result, see ``termination``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Progress:
    step: int | None = None
    total_steps: int | None = None
    loss: float | None = None
    eta_seconds: float | None = None
    checkpoint_step: int | None = None
    checkpoint_time: str | None = None
    stage: str | None = None

    @property
    def fraction(self) -> str | None:
        if self.step is None or not self.total_steps:
            return None
        return f"{self.step}/{self.total_steps}"


def parse_progress(log_text: str, start: Progress | None = None) -> Progress:
    """The latest step/checkpoint/phase events in a log tail (on top of ``start``); other lines are ignored.

    >>> parse_progress('{"event":"step","step":3,"totalSteps":10,"loss":0.5}').fraction
    '3/10'
    """
    progress = start or Progress()
    for line in log_text.splitlines():
        progress = advance(progress, line)
    return progress


def advance(progress: Progress, line: str) -> Progress:
    """``progress`` after one more log line (unchanged for a line that is not a trainer event)."""
    line = line.strip()
    if not line.startswith("{"):
        return progress
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return progress
    if not isinstance(event, dict):
        return progress
    kind = event.get("event")
    p = progress
    if kind == "step":
        return replace(
            p,
            step=_int(event.get("step"), p.step),
            total_steps=_int(event.get("totalSteps"), p.total_steps),
            loss=_float(event.get("loss"), p.loss),
            eta_seconds=_float(event.get("etaSeconds"), p.eta_seconds),
        )
    if kind == "checkpoint":
        when = event.get("time")
        return replace(
            p,
            checkpoint_step=_int(event.get("step"), p.checkpoint_step),
            checkpoint_time=when if isinstance(when, str) else p.checkpoint_time,
        )
    if kind == "phase" and isinstance(event.get("phase"), str):
        return replace(p, stage=event["phase"])
    return progress


def _int(value: object, default: int | None) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else default


def _float(value: object, default: float | None) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and value == value:  # not NaN
        return float(value)
    return default
