"""Kubernetes ``Status`` error bodies, phrased the way kube-apiserver phrases them.

A real API server answers every failure with a ``kind: Status`` object whose ``reason`` and
``details`` clients act on (``kubectl`` prints ``The FineTuneJob "x" is invalid: <causes>`` from
``details.causes``; Kopf and client libraries map ``reason`` to exception types). kmock answers
with its own reasons ("Object Not Found"); this module produces the real ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


class ApiError(Exception):
    """An API failure rendered as a ``Status`` object with an HTTP code."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            body["details"] = self.details
        return body


def qualified(plural: str, group: str) -> str:
    """``finetunejobs.kubetune.dev`` / ``pods`` — the resource as error messages name it."""
    return f"{plural}.{group}" if group else plural


def not_found(plural: str, group: str, name: str) -> ApiError:
    return ApiError(
        404,
        "NotFound",
        f'{qualified(plural, group)} "{name}" not found',
        {"name": name, "group": group, "kind": plural},
    )


def already_exists(plural: str, group: str, name: str) -> ApiError:
    return ApiError(
        409,
        "AlreadyExists",
        f'{qualified(plural, group)} "{name}" already exists',
        {"name": name, "group": group, "kind": plural},
    )


def conflict(plural: str, group: str, name: str) -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {qualified(plural, group)} "{name}": the object has been '
        "modified; please apply your changes to the latest version and try again",
        {"name": name, "group": group, "kind": plural},
    )


def no_resource() -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource", {})


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def method_not_allowed(message: str) -> ApiError:
    return ApiError(405, "MethodNotAllowed", message)


def unsupported_media_type(content_type: str, accepted: str) -> ApiError:
    return ApiError(
        415,
        "UnsupportedMediaType",
        f"the body of the request was in an unknown format - accepted media types include: {accepted}"
        f" (got {content_type}; this emulated server speaks JSON only)",
    )


# field.ErrorType in k8s.io/apimachinery/pkg/util/validation/field: (printed type, cause reason).
_ERROR_TYPES = {
    "required": ("Required value", "FieldValueRequired"),
    "invalid": ("Invalid value", "FieldValueInvalid"),
    "type": ("Invalid value", "FieldValueTypeInvalid"),
    "not_supported": ("Unsupported value", "FieldValueNotSupported"),
    "too_long": ("Too long", "FieldValueTooLong"),
    "too_many": ("Too many", "FieldValueTooMany"),
    "forbidden": ("Forbidden", "FieldValueForbidden"),
    "duplicate": ("Duplicate value", "FieldValueDuplicate"),
}
# Error types whose printed body omits the bad value (field.Error.ErrorBody).
_VALUELESS = {"required", "forbidden", "too_long"}
_OMIT = object()


def go_value(value: Any) -> str:
    """Format a bad value the way ``field.Error`` does (Go ``%v`` for numbers, ``%q`` for strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, float):
        return go_number(value)
    if isinstance(value, int):
        return str(value)
    if value is None:
        return '"null"'  # field.Error prints a nil bad value as the string "null"
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def go_number(value: float | int) -> str:
    """Go's ``%v`` of a float64: ``16`` not ``16.0``, ``0.5``, ``1e+21``."""
    if isinstance(value, bool):
        return str(value).lower()
    number = float(value)
    if number.is_integer() and abs(number) < 1e21:
        return str(int(number))
    text = repr(number)
    return text.replace("e-0", "e-").replace("e+0", "e+") if "e" in text else text


@dataclass(frozen=True)
class FieldError:
    """One ``details.causes`` entry: a field path, an error type, the bad value and a detail."""

    kind: str
    path: str
    value: Any = field(default=_OMIT)
    detail: str = ""

    @property
    def reason(self) -> str:
        return _ERROR_TYPES[self.kind][1]

    def body(self) -> str:
        text = _ERROR_TYPES[self.kind][0]
        if self.kind not in _VALUELESS and self.value is not _OMIT:
            text += f": {go_value(self.value)}"
        if self.detail:
            text += f": {self.detail}"
        return text

    def __str__(self) -> str:
        return f"{self.path}: {self.body()}"


def invalid(kind: str, group: str, name: str, errors: list[FieldError]) -> ApiError:
    """HTTP 422 ``Invalid`` exactly as ``apierrors.NewInvalid`` builds it."""
    listed = str(errors[0]) if len(errors) == 1 else "[" + ", ".join(str(e) for e in errors) + "]"
    qualified_kind = f"{kind}.{group}" if group else kind
    return ApiError(
        422,
        "Invalid",
        f'{qualified_kind} "{name}" is invalid: {listed}',
        {
            "name": name,
            "group": group,
            "kind": kind,
            "causes": [{"reason": e.reason, "message": e.body(), "field": e.path} for e in errors],
        },
    )
