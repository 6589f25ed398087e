"""``explain-failure`` in one view: phase, message, why (failed, stuck pod, retried attempt), conditions,
events, the trainer's exit report (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from kubetune.kubectl_plugin.pods import Termination
from kubetune.kubectl_plugin.render import NONE, age, number, table

EXPLAINED_PHASES = frozenset({"Failed", "Cancelled"})


def _event_time(event: dict[str, Any]) -> str:
    return (
        event.get("lastTimestamp")
        or event.get("eventTime")
        or event.get("firstTimestamp")
        or event.get("metadata", {}).get("creationTimestamp")
        or ""
    )


def conditions_table(conditions: Sequence[dict[str, Any]]) -> str:
    rows = [
        [c.get("type", "?"), c.get("status", "?"), c.get("reason") or NONE, c.get("message") or ""]
        for c in conditions
    ]
    return table(["TYPE", "STATUS", "REASON", "MESSAGE"], rows)


def events_table(events: Sequence[dict[str, Any]], now: datetime) -> str:
    """Oldest first, like ``kubectl events``; repeated events show their count."""
    rows = []
    for event in sorted(events, key=_event_time):
        count = event.get("count") or 1
        rows.append(
            [
                age(_event_time(event), now) + (f" (x{count})" if count > 1 else ""),
                event.get("type") or NONE,
                event.get("reason") or NONE,
                event.get("message") or "",
            ]
        )
    return table(["LAST SEEN", "TYPE", "REASON", "MESSAGE"], rows)


def termination_block(term: Termination, now: datetime) -> list[str]:
    exit_text = f"exit code {term.exit_code}" if term.exit_code is not None else "no exit code"
    if term.reason:
        exit_text += f", {term.reason}"
    finished = f", finished {age(term.finished_at, now)} ago" if term.finished_at else ""
    lines = [f"Trainer termination message (pod {term.pod}, {exit_text}{finished}):"]
    if term.result is not None:
        lines.append(f"  reason:  {term.result.reason or NONE}")
        if term.result.metrics:
            metrics = ", ".join(f"{k}={number(v)}" for k, v in sorted(term.result.metrics.items()))
            lines.append(f"  metrics: {metrics}")
        if term.result.adapter_uri:
            lines.append(f"  adapter: {term.result.adapter_uri}")
    elif term.raw:
        lines.append("  (not a TrainResult; the trainer's last log lines)")
        lines.extend(f"  {line}" for line in term.raw.splitlines())
    else:
        lines.append("  (empty)")
    return lines


def _indent(text: str) -> list[str]:
    return [f"  {line}" for line in text.splitlines()]


def stuck_condition(status: dict[str, Any]) -> dict[str, Any] | None:
    """The operator's ``PodsHealthy=False`` condition: a pod that cannot be scheduled or started."""
    return next(
        (
            c
            for c in status.get("conditions") or []
            if c.get("type") == "PodsHealthy" and c.get("status") == "False"
        ),
        None,
    )


def trouble(job: dict[str, Any]) -> str | None:
    """Why a FineTuneJob needs explaining (failed, stuck, retrying a failed attempt), or None."""
    status = job.get("status") or {}
    phase = status.get("phase") or "Pending"
    if phase in EXPLAINED_PHASES:
        return f"it {phase.lower()}"
    if (stuck := stuck_condition(status)) is not None:
        reason = stuck.get("reason") or "PodsHealthy=False"
        return f"it is stuck ({reason}): {stuck.get('message') or ''}".strip()
    ready: dict[str, Any] = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
    if ready.get("reason") == "Retrying":
        return f"an attempt failed and is retried: {ready.get('message') or ''}".strip()
    return None


def explain_failure(
    job: dict[str, Any],
    events: Sequence[dict[str, Any]],
    termination: Termination | None,
    now: datetime,
    unreconciled: str | None = None,
) -> str:
    """Everything that says why a FineTuneJob failed, is stuck or retries, in the order one reads it;
    ``unreconciled`` is the warning for an object no operator has looked at."""
    meta, status = job.get("metadata", {}), job.get("status") or {}
    phase = status.get("phase") or "Pending"
    title = f"FineTuneJob {meta.get('namespace', 'default')}/{meta.get('name', '?')}: {phase}"
    lines = [title, f"  {status.get('message') or '(no message)'}"]
    if unreconciled is not None:
        lines.append(unreconciled)
        return "\n".join(lines)
    why = trouble(job)
    if why is None:
        lines.append(f"The job has not failed (phase {phase}) and nothing is stuck; nothing to explain.")
        return "\n".join(lines)
    lines += ["", f"Why: {why}", "", "Conditions:"]
    conditions = status.get("conditions") or []
    lines += _indent(conditions_table(conditions)) if conditions else ["  (none)"]
    lines += ["", "Events:"]
    lines += _indent(events_table(events, now)) if events else ["  (none; events expire after an hour)"]
    if termination is not None:
        lines += ["", *termination_block(termination, now)]
    elif phase in EXPLAINED_PHASES:
        lines += ["", "Trainer termination message: no failed pod left (deleted or garbage-collected)"]
        result = status.get("result") or {}
        if result.get("reason"):
            lines.append(f"  status.result.reason: {result['reason']}")
    return "\n".join(lines)
