"""``x-kubernetes-validations`` CEL rules, evaluated as the API server evaluates them.

Each rule runs at its schema node with ``self`` bound to the node's value (numbers typed by the
schema: ``number`` fields are doubles even when written as ``4``). A rule that mentions
``oldSelf`` is a transition rule: skipped on create and where the old object has no value at that
node; on update ``oldSelf`` is the old value (list items correlate only for
``x-kubernetes-list-type: map``). On update, plain rules at nodes whose value did not change are
skipped (validation ratcheting). ``message``, ``messageExpression``, ``reason`` and ``fieldPath``
shape the error like the real server: ``spec.training: Invalid value: "object": <message>``.
kmock has no admission at all; evaluation uses the ``common-expression-language`` package.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import cel

from .errors import FieldError
from .schema import format_path

MISSING: Any = object()

_REASONS = {
    "FieldValueInvalid": "invalid",
    "FieldValueForbidden": "forbidden",
    "FieldValueRequired": "required",
    "FieldValueDuplicate": "duplicate",
}


@lru_cache(maxsize=512)
def compiled(rule: str) -> tuple[Any, bool]:
    """(program, is_transition_rule)."""
    program = cel.compile(rule)
    return program, "oldSelf" in program.references()["variables"]


def to_cel(value: Any, schema: dict[str, Any]) -> Any:
    """JSON value -> CEL value typed by the schema (``number`` -> double)."""
    if schema.get("type") == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        addl = schema.get("additionalProperties")
        return {
            k: to_cel(v, props.get(k) or (addl if isinstance(addl, dict) else {})) for k, v in value.items()
        }
    if isinstance(value, list):
        items = schema.get("items") if isinstance(schema.get("items"), dict) else {}
        return [to_cel(v, items) for v in value]
    return value


def _describe(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"no such key: {exc.args[0]}"
    return str(exc).splitlines()[0]


def _check_rule(
    rule: dict[str, Any], new: Any, old: Any, schema: dict[str, Any], path: str, errors: list[FieldError]
) -> None:
    program, transition = compiled(rule["rule"])
    if transition and old is MISSING:
        return
    if not transition and old is not MISSING and old == new:
        return  # ratcheting: an unchanged value keeps passing
    context = {"self": to_cel(new, schema)}
    if transition:
        context["oldSelf"] = to_cel(old, schema)
    type_name = schema.get("type", "object")
    try:
        ok = program.execute(context)
    except Exception as exc:  # a rule that cannot evaluate is reported, as the server reports it
        errors.append(
            FieldError("invalid", path, type_name, f"{_describe(exc)} evaluating rule: {rule['rule']}")
        )
        return
    if ok is True:
        return
    message = rule.get("message") or f"failed rule: {rule['rule']}"
    if rule.get("messageExpression"):
        try:
            evaluated = cel.compile(rule["messageExpression"]).execute(context)
            if isinstance(evaluated, str) and evaluated.strip():
                message = evaluated
        except Exception:  # the server falls back to message when messageExpression fails
            pass
    field_path = path + rule.get("fieldPath", "")
    kind = _REASONS.get(rule.get("reason", "FieldValueInvalid"), "invalid")
    value = type_name if kind in ("invalid", "duplicate") else None
    errors.append(
        FieldError(kind, field_path, value, message)
        if value is not None
        else FieldError(kind, field_path, detail=message)
    )


def _list_map_old(item: Any, old_list: Any, schema: dict[str, Any]) -> Any:
    keys = schema.get("x-kubernetes-list-map-keys") or []
    if schema.get("x-kubernetes-list-type") != "map" or not isinstance(old_list, list) or not keys:
        return MISSING
    for old_item in old_list:
        if (
            isinstance(old_item, dict)
            and isinstance(item, dict)
            and all(old_item.get(k) == item.get(k) for k in keys)
        ):
            return old_item
    return MISSING


def check_rules(
    new: Any,
    old: Any,
    schema: dict[str, Any],
    raw_path: list[str | int],
    root_schema: dict[str, Any],
    errors: list[FieldError],
) -> None:
    """Append the errors of every rule at and below this node to ``errors``."""
    path = format_path(raw_path, root_schema)
    for rule in schema.get("x-kubernetes-validations") or []:
        _check_rule(rule, new, old, schema, path, errors)
    if isinstance(new, dict):
        props = schema.get("properties") or {}
        addl = schema.get("additionalProperties")
        for key, value in new.items():
            sub = props.get(key) or (addl if isinstance(addl, dict) else None)
            if sub is None or (not raw_path and key == "metadata"):
                continue
            old_value = old.get(key, MISSING) if isinstance(old, dict) else MISSING
            check_rules(value, old_value, sub, [*raw_path, key], root_schema, errors)
    elif isinstance(new, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(new):
            check_rules(
                item,
                _list_map_old(item, old, schema),
                schema["items"],
                [*raw_path, index],
                root_schema,
                errors,
            )
