"""Structural schema operations of a CRD's ``openAPIV3Schema``: null-dropping, defaulting, pruning,
and OpenAPI validation with the API server's error phrasing.

A real API server, decoding a custom resource, drops ``null`` for non-nullable fields without a
default, applies ``default`` values (recursing into defaulted objects), prunes fields the schema
does not declare (unless ``x-kubernetes-preserve-unknown-fields``), then validates. kmock stores
the body as sent. Validation runs ``jsonschema`` with Draft 4 semantics (boolean
``exclusiveMinimum``), and each error is rephrased as kube-openapi phrases it
(``spec.lora.r: Invalid value: -4: spec.lora.r in body should be greater than or equal to 1``).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

import jsonschema

from .errors import FieldError, go_number

Path = Sequence[str | int]


def format_path(path: Path, schema: dict[str, Any]) -> str:
    """``spec.tolerations[0].key`` / ``spec.nodeSelector[zone]`` for a raw path through ``schema``."""
    text, node = "", schema
    for part in path:
        props = (node or {}).get("properties") or {}
        if isinstance(part, int):
            text += f"[{part}]"
            node = (node or {}).get("items") or {}
        elif part in props:
            text += f".{part}" if text else part
            node = props[part]
        else:
            text += f"[{part}]"
            addl = (node or {}).get("additionalProperties")
            node = addl if isinstance(addl, dict) else {}
    return text


def lookup(obj: Any, path: Path) -> tuple[bool, Any]:
    """(found, value) at ``path`` inside ``obj``."""
    node = obj
    for part in path:
        if (isinstance(part, int) and isinstance(node, list) and 0 <= part < len(node)) or (
            isinstance(part, str) and isinstance(node, dict) and part in node
        ):
            node = node[part]
        else:
            return False, None
    return True, node


def apply_defaults(value: Any, schema: dict[str, Any]) -> Any:
    """Drop non-nullable nulls without defaults, then fill ``default``s, recursing into them."""
    if isinstance(value, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key in value and value[key] is None and not sub.get("nullable"):
                if "default" in sub:
                    value[key] = copy.deepcopy(sub["default"])
                else:
                    del value[key]
            elif key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = apply_defaults(value[key], sub)
        addl = schema.get("additionalProperties")
        if isinstance(addl, dict):
            for key in value:
                value[key] = apply_defaults(value[key], addl)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(item, schema["items"]) for item in value]
    return value


def prune(
    value: Any,
    schema: dict[str, Any],
    path: list[str | int],
    pruned: list[str],
    root_schema: dict[str, Any],
    is_root: bool = False,
) -> Any:
    """Remove fields the schema does not declare; record their paths in ``pruned``."""
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        addl = schema.get("additionalProperties")
        preserve = schema.get("x-kubernetes-preserve-unknown-fields", False)
        for key in list(value):
            if is_root and key in ("apiVersion", "kind", "metadata"):
                continue
            if key in props:
                value[key] = prune(value[key], props[key], [*path, key], pruned, root_schema)
            elif isinstance(addl, dict):
                value[key] = prune(value[key], addl, [*path, key], pruned, root_schema)
            elif not (preserve or addl is True):
                parent = format_path(path, root_schema)
                pruned.append(f"{parent}.{key}" if parent else key)
                del value[key]
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [prune(item, schema["items"], [*path, i], pruned, root_schema) for i, item in enumerate(value)]
    return value


def _draft4(schema: Any) -> Any:
    """The schema with OpenAPI-only notions made Draft 4: ``nullable`` admits null,
    ``x-kubernetes-int-or-string`` admits both types."""
    if isinstance(schema, list):
        return [_draft4(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    result = {
        k: _draft4(v)
        if k in ("properties", "items", "additionalProperties", "allOf", "anyOf", "oneOf", "not")
        else v
        for k, v in schema.items()
    }
    if isinstance(result.get("properties"), dict):
        result["properties"] = {k: _draft4(v) for k, v in schema["properties"].items()}
    if schema.get("x-kubernetes-int-or-string"):
        result.pop("type", None)
        result["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if schema.get("nullable") and isinstance(result.get("type"), str):
        result["type"] = [result["type"], "null"]
    return result


@lru_cache(maxsize=64)
def _validator(schema_json: str) -> jsonschema.Draft4Validator:
    return jsonschema.Draft4Validator(_draft4(json.loads(schema_json)))


def json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def _in_body(path: str, text: str) -> str:
    return f"{path} in body {text}"


def _translate(
    err: jsonschema.ValidationError, root: dict[str, Any]
) -> Iterable[tuple[list[str | int], FieldError]]:
    raw = list(err.absolute_path)
    path = format_path(raw, root)
    kind, rule, value, node = err.validator, err.validator_value, err.instance, err.schema
    if kind == "required":
        for prop in rule:
            if isinstance(value, dict) and prop not in value:
                yield [*raw, prop], FieldError("required", format_path([*raw, prop], root))
        return
    if kind == "type":
        expected = rule if isinstance(rule, str) else rule[0]
        actual = json_type(value)
        yield (
            raw,
            FieldError(
                "type", path, actual, _in_body(path, f"must be of type {expected}: {json.dumps(actual)}")
            ),
        )
    elif kind == "enum":
        allowed = ", ".join(json.dumps(v) for v in rule)
        yield raw, FieldError("not_supported", path, value, f"supported values: {allowed}")
    elif kind == "maxLength":
        yield raw, FieldError("too_long", path, detail=f"may not be more than {rule} bytes")
    elif kind in ("maxItems", "maxProperties"):
        yield raw, FieldError("too_many", path, len(value), f"must have at most {rule} items")
    elif kind == "minimum":
        phrase = "greater than" if node.get("exclusiveMinimum") else "greater than or equal to"
        yield raw, FieldError("invalid", path, value, _in_body(path, f"should be {phrase} {go_number(rule)}"))
    elif kind == "maximum":
        phrase = "less than" if node.get("exclusiveMaximum") else "less than or equal to"
        yield raw, FieldError("invalid", path, value, _in_body(path, f"should be {phrase} {go_number(rule)}"))
    elif kind == "pattern":
        yield raw, FieldError("invalid", path, value, _in_body(path, f"should match '{rule}'"))
    elif kind == "minLength":
        yield raw, FieldError("invalid", path, value, _in_body(path, f"should be at least {rule} chars long"))
    elif kind == "minItems":
        yield raw, FieldError("invalid", path, value, _in_body(path, f"should have at least {rule} items"))
    elif kind == "minProperties":
        yield (
            raw,
            FieldError("invalid", path, value, _in_body(path, f"should have at least {rule} properties")),
        )
    elif kind == "uniqueItems":
        yield raw, FieldError("duplicate", path, value)
    elif kind == "multipleOf":
        yield (
            raw,
            FieldError("invalid", path, value, _in_body(path, f"should be a multiple of {go_number(rule)}")),
        )
    else:
        yield raw, FieldError("invalid", path, value, err.message)


def validate(
    obj: dict[str, Any], schema: dict[str, Any], old: dict[str, Any] | None = None
) -> list[FieldError]:
    """OpenAPI errors of ``obj``; on update, errors at values unchanged from ``old`` are dropped
    (CRD validation ratcheting, on by default since Kubernetes 1.30)."""
    validator = _validator(json.dumps(schema, sort_keys=True))
    errors: list[FieldError] = []
    # Metadata is validated by the server's ObjectMeta rules, not the CRD schema.
    body = {k: v for k, v in obj.items() if k != "metadata"}
    for err in sorted(validator.iter_errors(body), key=lambda e: list(map(str, e.absolute_path))):
        for raw, field_error in _translate(err, schema):
            if old is not None:
                found_new, new_value = lookup(obj, raw)
                found_old, old_value = lookup(old, raw)
                if found_new == found_old and new_value == old_value:
                    continue
            if field_error not in errors:
                errors.append(field_error)
    return errors


BLOCKING = {"type", "required", "not_supported", "too_long", "too_many"}
