"""PATCH bodies applied the way the API server applies them.

kmock deep-merges every patch into the object. A real server distinguishes the content types:
- ``application/merge-patch+json`` (RFC 7386): dicts merge, ``null`` deletes, lists are replaced;
- ``application/strategic-merge-patch+json`` (kubectl on built-in kinds): like a merge patch, but
  lists of named items (containers, env, volumes, ports...) merge by ``name``, with ``$patch`` and
  ``$setElementOrder`` directives; custom resources reject it (415), as the real server does;
- ``application/json-patch+json`` (RFC 6902) operations;
- ``application/apply-patch+yaml`` (server-side apply), approximated as a merge patch.
"""

from __future__ import annotations

import copy
from typing import Any

from .errors import ApiError, bad_request

MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY = "application/apply-patch+yaml"


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _named(items: list[Any]) -> bool:
    return all(isinstance(item, dict) and "name" in item for item in items)


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """A strategic merge patch for the shapes kubectl sends; lists merge by ``name`` when every
    item has one, other lists are replaced (the per-field patch strategies of the Go types are not
    known here)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if patch.get("$patch") == "delete":
        return None
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    orders = {k.split("/", 1)[1]: v for k, v in patch.items() if k.startswith("$setElementOrder/")}
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        elif (
            isinstance(value, list)
            and isinstance(result.get(key), list)
            and _named(value)
            and _named(result[key])
        ):
            result[key] = _merge_named_list(result[key], value, orders.get(key))
        elif isinstance(value, list):
            result[key] = [
                strategic_merge_patch(None, v) if isinstance(v, dict) else copy.deepcopy(v)
                for v in value
                if not (isinstance(v, dict) and v.get("$patch") == "delete")
            ]
        else:
            merged = strategic_merge_patch(result.get(key), value)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
    return result


def _merge_named_list(
    current: list[dict[str, Any]], patch: list[dict[str, Any]], order: list[dict[str, Any]] | None
) -> list[dict[str, Any]]:
    by_name = {item["name"]: item for item in current}
    names = [item["name"] for item in current]
    for item in patch:
        name = item["name"]
        if item.get("$patch") == "delete":
            by_name.pop(name, None)
            names = [n for n in names if n != name]
            continue
        by_name[name] = strategic_merge_patch(by_name.get(name), item)
        if name not in names:
            names.append(name)
    if order:
        wanted = [entry["name"] for entry in order if isinstance(entry, dict) and "name" in entry]
        names = [n for n in wanted if n in by_name] + [n for n in names if n not in wanted]
    return [by_name[n] for n in names if n in by_name]


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise bad_request(f"json patch: invalid path {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str]) -> Any:
    node = doc
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902 JSON patch (add, remove, replace, move, copy, test)."""
    if not isinstance(operations, list):
        raise bad_request("json patch: the body must be a list of operations")
    doc = copy.deepcopy(target)
    for op in operations:
        try:
            doc = _apply_op(doc, op)
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise ApiError(
                422,
                "Invalid",
                f"the server rejected our request due to an error in our "
                f"request: json patch {op.get('op')} operation failed: {exc}",
            ) from exc
    return doc


def _apply_op(doc: Any, op: dict[str, Any]) -> Any:
    kind, parts = op["op"], _pointer(op["path"])
    if kind == "test":
        node = doc
        for part in parts:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if node != op.get("value"):
            raise ValueError(f"testing value {op['path']} failed")
        return doc
    if kind in ("move", "copy"):
        source = _pointer(op["from"])
        node = doc
        for part in source:
            node = node[int(part)] if isinstance(node, list) else node[part]
        value = copy.deepcopy(node)
        if kind == "move":
            doc = _apply_op(doc, {"op": "remove", "path": op["from"]})
        return _apply_op(doc, {"op": "add", "path": op["path"], "value": value})
    if not parts:
        return copy.deepcopy(op.get("value")) if kind in ("add", "replace") else None
    parent, last = _parent(doc, parts), parts[-1]
    if kind == "remove":
        del parent[int(last) if isinstance(parent, list) else last]
    elif kind == "replace":
        if isinstance(parent, list):
            parent[int(last)] = copy.deepcopy(op["value"])
        else:
            if last not in parent:
                raise KeyError(last)
            parent[last] = copy.deepcopy(op["value"])
    elif kind == "add":
        if isinstance(parent, list):
            index = len(parent) if last == "-" else int(last)
            parent.insert(index, copy.deepcopy(op["value"]))
        else:
            parent[last] = copy.deepcopy(op["value"])
    else:
        raise ValueError(f"unknown operation {kind!r}")
    return doc
