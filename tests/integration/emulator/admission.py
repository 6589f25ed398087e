"""Admission of custom resources on create and update, in the API server's order.

1. decode: drop non-nullable nulls, apply schema defaults, prune undeclared fields
   (``?fieldValidation=Strict`` — what ``kubectl apply`` sends — turns pruned fields into a 400
   ``strict decoding error``, ``Warn`` into ``Warning`` headers);
2. validate ``metadata.name`` and the body against ``openAPIV3Schema``;
3. unless a blocking schema error (type, required, enum, too long, too many) was found, evaluate the
   CEL rules (with ``oldSelf`` on update);
4. any error -> 422 ``Invalid`` naming every cause.
kmock admits everything as sent.
"""

from __future__ import annotations

import re
from typing import Any

from . import cel_rules, schema
from .errors import ApiError, FieldError, bad_request, invalid
from .registry import ResourceDef

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_SUBDOMAIN_HELP = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
    "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
    "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)


def name_errors(obj: dict[str, Any]) -> list[FieldError]:
    """``metadata.name`` checks every kind gets (DNS subdomain, at most 253 characters)."""
    name = (obj.get("metadata") or {}).get("name")
    if not name:
        return [FieldError("required", "metadata.name", detail="name or generateName is required")]
    if len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        return [FieldError("invalid", "metadata.name", name, _SUBDOMAIN_HELP)]
    return []


def decode(rdef: ResourceDef, obj: dict[str, Any], field_validation: str | None) -> list[str]:
    """Default and prune ``obj`` in place; return warnings (or raise for Strict field validation)."""
    assert rdef.schema is not None
    schema.apply_defaults(obj, rdef.schema)
    pruned: list[str] = []
    schema.prune(obj, rdef.schema, [], pruned, rdef.schema, is_root=True)
    if not pruned:
        return []
    unknown = [f'unknown field "{path}"' for path in pruned]
    if field_validation == "Strict":
        raise bad_request(
            f'{rdef.kind} in version "{rdef.version}" cannot be handled as a {rdef.kind}: '
            f"strict decoding error: {', '.join(unknown)}"
        )
    return unknown if field_validation == "Warn" else []


def validate(rdef: ResourceDef, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
    """Raise a 422 ``Invalid`` naming every schema and CEL error of ``obj``."""
    errors = name_errors(obj)
    if rdef.schema is not None:
        errors += schema.validate(obj, rdef.schema, old)
        if any(e.kind in schema.BLOCKING for e in errors):
            errors.append(
                FieldError(
                    "invalid",
                    "<nil>",
                    None,
                    "some validation rules were not checked because the object was invalid; "
                    "correct the existing errors to complete validation",
                )
            )
        else:
            cel_rules.check_rules(
                obj, cel_rules.MISSING if old is None else old, rdef.schema, [], rdef.schema, errors
            )
    if errors:
        name = (obj.get("metadata") or {}).get("name") or ""
        raise invalid(rdef.kind, rdef.group, name, errors)


def admit(
    rdef: ResourceDef, obj: dict[str, Any], old: dict[str, Any] | None, field_validation: str | None
) -> list[str]:
    """Decode and validate ``obj`` in place; returns ``Warning`` header texts."""
    if obj.get("kind") not in (None, rdef.kind):
        raise bad_request(f"the object provided is unrecognized (kind {obj.get('kind')!r} != {rdef.kind!r})")
    warnings = decode(rdef, obj, field_validation) if rdef.schema is not None else []
    validate(rdef, obj, old)
    return warnings


__all__ = ["ApiError", "admit"]
