"""Label and field selectors (``?labelSelector=`` / ``?fieldSelector=``) as the API server reads them.

kmock lists and watches every object of a resource; a real server filters by selectors, which
kubectl (``-l``, ``kubectl delete`` waiting via ``metadata.name``), Kopf and ``kubectl logs job/x``
rely on.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .errors import bad_request

Predicate = Callable[[dict[str, Any]], bool]

_SET_RE = re.compile(r"^\s*(!?)([A-Za-z0-9._/-]+)\s*(?:(notin|in)\s*\(([^)]*)\))?\s*$")
_OP_RE = re.compile(r"^\s*([A-Za-z0-9._/-]+)\s*(==|=|!=|>|<)\s*([A-Za-z0-9._-]*)\s*$")


def _split_requirements(selector: str) -> list[str]:
    """Split on commas that are not inside ``in (a,b)`` value sets."""
    parts, depth, current = [], 0, ""
    for char in selector:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    if current.strip():
        parts.append(current)
    return [p for p in parts if p.strip()]


def _requirement(text: str) -> Callable[[dict[str, str]], bool]:
    match = _OP_RE.match(text)
    if match:
        key, op, value = match.groups()
        if op in ("=", "=="):
            return lambda labels: labels.get(key) == value
        if op == "!=":
            return lambda labels: labels.get(key) != value
        if not value.lstrip("-").isdigit():
            raise bad_request(
                f"unable to parse requirement: {text!r}: for 'Gt', 'Lt' operators, the value "
                "must be an integer"
            )
        number = int(value)
        if op == ">":
            return lambda labels: _int(labels.get(key)) is not None and _int(labels.get(key)) > number  # type: ignore[operator]
        return lambda labels: _int(labels.get(key)) is not None and _int(labels.get(key)) < number  # type: ignore[operator]
    match = _SET_RE.match(text)
    if not match:
        raise bad_request(f"unable to parse requirement: {text!r}")
    negate, key, op, values_text = match.groups()
    if op:
        if negate:
            raise bad_request(f"unable to parse requirement: {text!r}")
        values = {v.strip() for v in values_text.split(",") if v.strip()}
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    if negate:
        return lambda labels: key not in labels
    return lambda labels: key in labels


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def label_selector(selector: str | None) -> Predicate:
    """A predicate over objects for a label selector string (``=``, ``==``, ``!=``, ``in``, ``notin``,
    existence ``key`` / ``!key``, ``>``/``<``)."""
    if not selector:
        return lambda obj: True
    requirements = [_requirement(part) for part in _split_requirements(selector)]

    def matches(obj: dict[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(req(labels) for req in requirements)

    return matches


def _field_value(obj: dict[str, Any], dotted: str) -> str:
    value: Any = obj
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def field_selector(selector: str | None) -> Predicate:
    """A predicate for a field selector (``metadata.name=x``, ``status.phase!=Running``,
    ``involvedObject.uid=...``); fields are looked up by their dotted path."""
    if not selector:
        return lambda obj: True
    requirements: list[tuple[str, bool, str]] = []
    for part in _split_requirements(selector):
        match = re.match(r"^\s*([A-Za-z0-9._]+)\s*(==|=|!=)\s*(.*?)\s*$", part)
        if not match:
            raise bad_request(f"invalid selector: '{selector}'; can't understand '{part}'")
        key, op, value = match.groups()
        requirements.append((key, op != "!=", value))

    def matches(obj: dict[str, Any]) -> bool:
        return all((_field_value(obj, key) == value) == equal for key, equal, value in requirements)

    return matches
