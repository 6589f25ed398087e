"""Read training progress from the trainer's structured JSON log lines (pure).

Trainer pods have no Kubernetes API rights, so they report the only way a pod can: stdout (progress,
read here from the pod log) and the termination message (the final result, see ``termination``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass


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


def parse_progress(log_text: str) -> Progress:
    """The latest step/checkpoint/phase events in a log tail; other lines are ignored.

    >>> parse_progress('{"event":"step","step":3,"totalSteps":10,"loss":0.5}').fraction
    '3/10'
    """
    step = total = ckpt_step = None
    loss = eta = None
    ckpt_time = stage = None
    for line in log_text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(event, dict):
            continue
        kind = event.get("event")
        if kind == "step":
            step = _int(event.get("step"), step)
            total = _int(event.get("totalSteps"), total)
            loss = _float(event.get("loss"), loss)
            eta = _float(event.get("etaSeconds"), eta)
        elif kind == "checkpoint":
            ckpt_step = _int(event.get("step"), ckpt_step)
            ckpt_time = event.get("time") if isinstance(event.get("time"), str) else ckpt_time
        elif kind == "phase" and isinstance(event.get("phase"), str):
            stage = event["phase"]
    return Progress(step, total, loss, eta, ckpt_step, ckpt_time, stage)


def _int(value: object, default: int | None) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else default


def _float(value: object, default: float | None) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and value == value:  # not NaN
        return float(value)
    return default
