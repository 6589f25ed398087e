"""Pure renderers: API objects (dicts as kubectl prints them with ``-o json``) -> text.

``now`` is always a parameter so every output is reproducible in tests.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

NONE = "-"
BAR_WIDTH = 10


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def human_duration(seconds: float) -> str:
    """Kubernetes' ``HumanDuration`` (the AGE column of ``kubectl get``): 45s, 5m30s, 2h10m, 3d4h, 12d."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes, hours = s // 60, s // 3600
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d{hours % 24}h" if hours % 24 else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    years, days = hours // (24 * 365), (hours // 24) % 365
    return f"{years}y{days}d" if years < 8 and days else f"{years}y"


def age(timestamp: str | None, now: datetime) -> str:
    when = parse_time(timestamp)
    return NONE if when is None else human_duration((now - when).total_seconds())


def progress_bar(progress: str | None, width: int = BAR_WIDTH) -> str:
    """``status.progress`` ("40/120") as ``[###-------] 40/120``; other text is shown as it is."""
    if not progress:
        return NONE
    step_text, _, total_text = progress.partition("/")
    try:
        step, total = int(step_text), int(total_text)
    except ValueError:
        return progress
    if total <= 0:
        return progress
    filled = min(width, max(0, step * width // total))
    return f"[{'#' * filled}{'-' * (width - filled)}] {step}/{total}"


def number(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return NONE
    return f"{value:.{digits}f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns three spaces apart, like ``kubectl get``."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)]
    lines = [
        "   ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=False)).rstrip()
        for row in (headers, *rows)
    ]
    return "\n".join(lines)


def _with_namespace(
    headers: list[str], rows: list[list[str]], objs: Sequence[dict[str, Any]], namespaces: bool
) -> str:
    if namespaces:
        headers = ["NAMESPACE", *headers]
        rows = [[o.get("metadata", {}).get("namespace", NONE), *r] for o, r in zip(objs, rows, strict=True)]
    return table(headers, rows)


def finetunejob_table(jobs: Sequence[dict[str, Any]], now: datetime, namespaces: bool = False) -> str:
    """NAME, PHASE, PROGRESS (a bar), LOSS, ACCURACY, AGE."""
    rows = []
    for job in jobs:
        status = job.get("status") or {}
        rows.append(
            [
                job.get("metadata", {}).get("name", "?"),
                status.get("phase") or NONE,
                progress_bar(status.get("progress")),
                number(status.get("loss")),
                number(status.get("accuracy")),
                age(job.get("metadata", {}).get("creationTimestamp"), now),
            ]
        )
    headers = ["NAME", "PHASE", "PROGRESS", "LOSS", "ACCURACY", "AGE"]
    return _with_namespace(headers, rows, jobs, namespaces)


def adapter_accuracy(status: dict[str, Any]) -> str:
    """The rolling accuracy from feedback; before there is any, the active adapter's eval score."""
    if isinstance(status.get("accuracy"), int | float):
        return number(status["accuracy"])
    evaluated = (status.get("activeAdapter") or {}).get("accuracy")
    return f"{number(evaluated)} (eval)" if isinstance(evaluated, int | float) else NONE


def active_version_cell(status: dict[str, Any]) -> str:
    version = (status.get("activeAdapter") or {}).get("version") or NONE
    canary = status.get("canary") or {}
    if canary.get("version"):
        return f"{version} (canary {canary['version']} {canary.get('weight', 0)}%)"
    return version


def adapterdeployment_table(adeps: Sequence[dict[str, Any]], namespaces: bool = False) -> str:
    """NAME, PHASE, ACTIVE VERSION, ACCURACY, READY (ready/desired pods, autoscaling bounds), DRIFT."""
    rows = []
    for adep in adeps:
        status = adep.get("status") or {}
        spec = adep.get("spec") or {}
        replicas = spec.get("replicas", 1)
        autoscaling = spec.get("autoscaling") or {}
        auto = (
            f" (auto {autoscaling.get('minReplicas', 1)}-{autoscaling['maxReplicas']})" if autoscaling else ""
        )
        rows.append(
            [
                adep.get("metadata", {}).get("name", "?"),
                status.get("phase") or NONE,
                active_version_cell(status),
                adapter_accuracy(status),
                f"{status.get('readyReplicas') or 0}/{replicas}{auto}",
                number(status.get("drift"), 3),
            ]
        )
    headers = ["NAME", "PHASE", "ACTIVE VERSION", "ACCURACY", "READY", "DRIFT"]
    return _with_namespace(headers, rows, adeps, namespaces)


def watch_key(job: dict[str, Any]) -> tuple[Any, ...]:
    """What ``watch`` prints a new line for when it changes."""
    status = job.get("status") or {}
    return status.get("phase"), status.get("progress"), status.get("loss")


def watch_line(job: dict[str, Any], now: datetime) -> str:
    """``12:00:05  Running  [###-------] 40/120  loss 0.5123  step 40/120, loss 0.5123, ETA 80s``."""
    status = job.get("status") or {}
    parts = [now.astimezone().strftime("%H:%M:%S"), status.get("phase") or "Pending"]
    if status.get("progress"):
        parts.append(progress_bar(status["progress"]))
    if isinstance(status.get("loss"), int | float):
        parts.append(f"loss {number(status['loss'])}")
    if isinstance(status.get("accuracy"), int | float):
        parts.append(f"accuracy {number(status['accuracy'])}")
    if status.get("message"):
        parts.append(f"({status['message']})")
    return "  ".join(parts)


def log_line(line: str) -> str:
    """One trainer log line: a JSON event as a readable one-liner; anything else unchanged."""
    text = line.rstrip("\n")
    if not text.lstrip().startswith("{"):
        return text
    try:
        event = json.loads(text)
    except json.JSONDecodeError:
        return text
    if not isinstance(event, dict) or not isinstance(event.get("event"), str):
        return text
    return _event_line(event.pop("event"), event)


def _kv(fields: dict[str, Any]) -> str:
    return " ".join(f"{k}={number(v) if isinstance(v, float) else v}" for k, v in fields.items())


def _event_line(kind: str, e: dict[str, Any]) -> str:
    if kind == "step":
        parts = [f"step {e.get('step', '?')}/{e.get('totalSteps', '?')}"]
        if isinstance(e.get("loss"), int | float):
            parts.append(f"loss {number(e['loss'])}")
        if isinstance(e.get("lr"), int | float):
            parts.append(f"lr {e['lr']:.2e}")
        if isinstance(e.get("epoch"), int | float):
            parts.append(f"epoch {e['epoch']:.2f}")
        if isinstance(e.get("etaSeconds"), int | float):
            parts.append(f"eta {human_duration(e['etaSeconds'])}")
        return "  ".join(parts)
    if kind == "phase":
        return f"== {e.get('phase', '?')}"
    if kind == "checkpoint":
        return f"checkpoint at step {e.get('step', '?')}" + (f" -> {e['path']}" if e.get("path") else "")
    metrics = e["metrics"] if isinstance(e.get("metrics"), dict) else {}
    if kind == "eval":
        return f"eval {e.get('stage', '?')}: {_kv(metrics)}".rstrip()
    if kind == "result":
        if e.get("reason"):
            return f"result: failed: {e['reason']}"
        text = f"result: adapter {e.get('adapterUri', NONE)}"
        return f"{text}  {_kv(metrics)}" if metrics else text
    return f"{kind}: {_kv(e)}".rstrip()
