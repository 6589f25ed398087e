"""Comparing what a builder produced with what the real API server stored.

The server adds defaults (a Job's ``completionMode``, a container's ``terminationMessagePath``, a
pod's ``dnsPolicy`` ...), so a stored object equals the builder's output only where the builder set
a value: ``differences(want, got)`` lists every such place where it does not.
"""

from __future__ import annotations

from typing import Any


def differences(want: Any, got: Any, path: str = "") -> list[str]:
    """Paths where ``got`` lacks or changes a value ``want`` sets (lists compare item by item and
    must have the same length; a zero value in ``want`` may be absent from ``got``, as the API
    server drops ``false``, ``0``, ``""`` and empty collections of omitempty fields)."""
    if isinstance(want, dict):
        if not isinstance(got, dict):
            return [f"{path or '.'}: want a mapping, got {got!r}"]
        out: list[str] = []
        for key, value in want.items():
            if key not in got:
                if value in ({}, [], None, False, 0, ""):
                    continue  # Go's omitempty: the server does not store zero values
                out.append(f"{path}.{key}: missing (want {value!r})")
            else:
                out += differences(value, got[key], f"{path}.{key}")
        return out
    if isinstance(want, list):
        if not isinstance(got, list) or len(got) != len(want):
            return [f"{path}: want {want!r}, got {got!r}"]
        return [
            d
            for i, (w, g) in enumerate(zip(want, got, strict=True))
            for d in differences(w, g, f"{path}[{i}]")
        ]
    if want != got and not (_quantity(want) is not None and _quantity(want) == _quantity(got)):
        return [f"{path}: want {want!r}, got {got!r}"]
    return []


def _quantity(value: Any) -> str | None:
    """Resource quantities come back canonical (``1`` for ``1``, ``2Gi`` for ``2Gi``, ``500m``)."""
    return str(value) if isinstance(value, int | str) else None
