"""``Table`` responses for ``kubectl get`` (``Accept: application/json;as=Table;g=meta.k8s.io``).

A real server renders CRDs' ``additionalPrinterColumns`` server-side (dates as ages like ``5m``);
kmock returns plain lists, so kubectl shows no printer columns. Built-in kinds get Name and Age.
"""

from __future__ import annotations

import datetime
import re
from typing import Any

from .registry import ResourceDef

_NAME = {
    "name": "Name",
    "type": "string",
    "format": "name",
    "priority": 0,
    "description": "Name must be unique within a namespace.",
}
_AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp", "priority": 0}


def wants_table(accept: str) -> bool:
    return "as=Table" in accept


def human_age(timestamp: str | None, now: datetime.datetime | None = None) -> str:
    """k8s.io/apimachinery duration.HumanDuration of the time since ``timestamp``."""
    if not timestamp:
        return "<unknown>"
    then = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    seconds = int(((now or datetime.datetime.now(datetime.UTC)) - then).total_seconds())
    if seconds < 120:
        return f"{max(seconds, 0)}s"
    minutes = seconds // 60
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 48:
        return f"{hours}h"
    return f"{hours // 24}d"


def json_path(obj: Any, path: str) -> Any:
    """The simple JSONPath subset printer columns use: ``.status.phase``, ``.spec.items[0].name``."""
    node = obj
    for name, index in re.findall(r"\.([^.\[]+)|\[(\d+)\]", path):
        if name:
            node = node.get(name) if isinstance(node, dict) else None
        else:
            node = node[int(index)] if isinstance(node, list) and int(index) < len(node) else None
    return node


def _columns(rdef: ResourceDef) -> list[dict[str, Any]]:
    columns = list(rdef.printer_columns) or [_AGE]
    if rdef.schema is None and not rdef.printer_columns:
        columns = [_AGE]
    return columns


def table(
    rdef: ResourceDef, objects: list[dict[str, Any]], resource_version: str, include_object: str
) -> dict[str, Any]:
    columns = _columns(rdef)
    definitions = [_NAME] + [
        {
            "name": c["name"],
            "type": c.get("type", "string"),
            "format": c.get("format", ""),
            "description": c.get("description", ""),
            "priority": c.get("priority", 0),
        }
        for c in columns
    ]
    rows = []
    for obj in objects:
        cells: list[Any] = [obj["metadata"]["name"]]
        for column in columns:
            value = json_path(obj, column["jsonPath"])
            if column.get("type") == "date":
                value = human_age(value) if value else None
            elif isinstance(value, (dict, list)):
                value = str(value)
            cells.append(value)
        if include_object == "Object":
            embedded: dict[str, Any] = obj
        elif include_object == "None":
            embedded = {}
        else:
            embedded = {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj["metadata"],
            }
        rows.append({"cells": cells, "object": embedded})
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": definitions,
        "rows": rows,
    }
