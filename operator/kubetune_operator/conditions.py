"""Kubernetes-convention conditions (pure): lastTransitionTime moves only when status flips."""

from __future__ import annotations

from typing import Any

from kubetune.api.common import Condition, ConditionStatus


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    now: str,
    generation: int | None,
) -> list[Condition]:
    """A new list with ``type_`` set; other conditions untouched, order stable."""
    out: list[Condition] = []
    found = False
    for cond in conditions:
        if cond.type != type_:
            out.append(cond)
            continue
        found = True
        since = cond.last_transition_time if cond.status == status else now
        out.append(
            Condition(
                type=type_,
                status=status,
                reason=reason,
                message=message,
                last_transition_time=since,
                observed_generation=generation,
            )
        )
    if not found:
        out.append(
            Condition(
                type=type_,
                status=status,
                reason=reason,
                message=message,
                last_transition_time=now,
                observed_generation=generation,
            )
        )
    return out


def get_condition(conditions: list[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


def status_patch(prev: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """A merge patch from ``prev`` to ``new`` status: fields that went away become null (deleted)."""
    patch: dict[str, Any] = dict(new)
    for key in prev:
        if key not in new:
            patch[key] = None
    return patch
