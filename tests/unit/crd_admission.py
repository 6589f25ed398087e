"""Offline admission of a custom resource against a generated CRD, phrased like kube-apiserver 1.34.

Steps in the API server's order: drop nulls and apply ``default``s, prune unknown fields (reported the
way ``kubectl apply``'s strict field validation reports them), validate the OpenAPI schema (Draft 4
semantics, kube-openapi's wording), then evaluate every ``x-kubernetes-validations`` rule with the
``common-expression-language`` package, unless an error that blocks CEL came first (a wrong type, a
missing required field, an unsupported enum value, too long a string, too many items), exactly as
``hasBlockingErr`` in apiextensions-apiserver does. Only create is modelled (no ``oldSelf``).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from typing import Any

import cel
import jsonschema

BLOCKING = ("Unsupported value", "Required value", "Too long", "Too many", "must be of type")
SKIPPED_CEL = "some validation rules were not checked because the object was invalid"


@dataclass(frozen=True)
class Verdict:
    errors: list[str]

    @property
    def accepted(self) -> bool:
        return not self.errors

    @property
    def text(self) -> str:
        return "\n".join(self.errors)


def admit(obj: dict[str, Any], crd: dict[str, Any]) -> Verdict:
    """The errors the API server would answer for creating ``obj`` (empty: accepted)."""
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    body = _as_go_decodes(copy.deepcopy(obj))
    _default(body, schema)
    unknown: list[str] = []
    _prune(body, schema, [], unknown, root=True)
    if unknown:
        return Verdict([f'strict decoding error: unknown field "{path}"' for path in unknown])
    errors = _openapi_errors(body, schema) + _duplicate_errors(body, schema, [], schema)
    if any(marker in error for error in errors for marker in BLOCKING):
        return Verdict([*errors, f"<nil>: Invalid value: null: {SKIPPED_CEL}"])
    _cel_errors(body, schema, [], errors, schema)
    return Verdict(errors)


def _path(parts: list[str | int], schema: dict[str, Any]) -> str:
    text, node = "", schema
    for part in parts:
        props = node.get("properties") or {}
        if isinstance(part, int):
            text, node = f"{text}[{part}]", node.get("items") or {}
        elif part in props:
            text, node = (f"{text}.{part}" if text else part), props[part]
        else:
            addl = node.get("additionalProperties")
            text, node = f"{text}[{part}]", addl if isinstance(addl, dict) else {}
    return text


def _default(value: Any, schema: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key in value and value[key] is None and not sub.get("nullable"):
                del value[key]
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                _default(value[key], sub)
        addl = schema.get("additionalProperties")
        if isinstance(addl, dict):
            for item in value.values():
                _default(item, addl)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            _default(item, schema["items"])


def _prune(
    value: Any, schema: dict[str, Any], path: list[str | int], out: list[str], root: bool = False
) -> None:
    if isinstance(value, dict):
        props, addl = schema.get("properties") or {}, schema.get("additionalProperties")
        for key in list(value):
            if root and key in ("apiVersion", "kind", "metadata"):
                continue
            if key in props:
                _prune(value[key], props[key], [*path, key], out)
            elif isinstance(addl, dict):
                _prune(value[key], addl, [*path, key], out)
            elif not schema.get("x-kubernetes-preserve-unknown-fields"):
                out.append(".".join(str(p) for p in [*path, key]))
                del value[key]
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            _prune(item, schema["items"], [*path, index], out)


INT64 = 2**63


def _as_go_decodes(value: Any) -> Any:
    """Integers past int64 become float64, as the API server's JSON decoder reads them."""
    if isinstance(value, dict):
        return {k: _as_go_decodes(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_go_decodes(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and not -INT64 <= value < INT64:
        return float(value)
    return value


def _go_float(value: float) -> str:
    """Go's %v of a float64: shortest digits, exponent form from 1e+06 up and below 1e-04."""
    exact = Decimal(repr(value))
    exponent = exact.adjusted()
    if -4 <= exponent < 6:
        return f"{exact:f}".removesuffix(".0") if exact != exact.to_integral() else str(int(exact))
    digits = "".join(map(str, exact.normalize().as_tuple().digits))
    mantissa = digits[0] + (f".{digits[1:]}" if len(digits) > 1 else "")
    return f"{'-' if value < 0 else ''}{mantissa}e{'-' if exponent < 0 else '+'}{abs(exponent):02d}"


def _go(value: Any) -> str:
    """A bad value the way field.Error prints it (%q for strings, %v for numbers)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, float):
        return _go_float(value)
    return str(value) if isinstance(value, int) else json.dumps(value)


def _json_type(value: Any) -> str:
    for kind, name in (
        (bool, "boolean"),
        (int, "integer"),
        (float, "number"),
        (str, "string"),
        (list, "array"),
    ):
        if isinstance(value, kind):
            return name
    return "object" if isinstance(value, dict) else "null"


def _or_equal(node: dict[str, Any], exclusive: str) -> str:
    return "" if node.get(exclusive) else "or equal to "


@lru_cache(maxsize=8)
def _validator(schema_json: str) -> jsonschema.Draft4Validator:
    return jsonschema.Draft4Validator(json.loads(schema_json))


def _openapi_errors(body: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    errors: list[str] = []
    doc = {k: v for k, v in body.items() if k != "metadata"}
    for err in sorted(_validator(json.dumps(schema)).iter_errors(doc), key=lambda e: list(map(str, e.path))):
        raw, kind, rule, value, node = (
            list(err.absolute_path),
            err.validator,
            err.validator_value,
            err.instance,
            err.schema,
        )
        path = _path(raw, schema)
        if kind == "required":
            errors += [f"{_path([*raw, p], schema)}: Required value" for p in rule if p not in value]
            continue
        low, high = _or_equal(node, "exclusiveMinimum"), _or_equal(node, "exclusiveMaximum")
        bound = _go(float(rule) if isinstance(value, float) and isinstance(rule, int) else rule)
        detail = {
            "type": f"{path} in body must be of type {rule}: {json.dumps(_json_type(value))}",
            "minimum": f"{path} in body should be greater than {low}{bound}",
            "maximum": f"{path} in body should be less than {high}{bound}",
            "pattern": f"{path} in body should match '{rule}'",
            "minLength": f"{path} in body should be at least {rule} chars long",
            "minItems": f"{path} in body should have at least {rule} items",
        }
        if kind == "type":
            errors.append(f'{path}: Invalid value: "{_json_type(value)}": {detail["type"]}')
        elif kind == "enum":
            errors.append(
                f"{path}: Unsupported value: {_go(value)}: supported values: "
                + ", ".join(json.dumps(v) for v in rule)
            )
        elif kind == "maxLength":
            errors.append(f"{path}: Too long: may not be more than {rule} bytes")
        elif kind in ("maxItems", "maxProperties"):
            errors.append(f"{path}: Too many: {len(value)}: must have at most {rule} items")
        elif kind in detail:
            errors.append(f"{path}: Invalid value: {_go(value)}: {detail[kind]}")
        else:
            errors.append(f"{path}: Invalid value: {_go(value)}: {err.message}")
    return errors


def _duplicate_errors(
    value: Any, schema: dict[str, Any], raw: list[str | int], top: dict[str, Any]
) -> list[str]:
    """``x-kubernetes-list-type: set``: a repeated item is ``Duplicate value`` at its second index."""
    out: list[str] = []
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for key, item in value.items():
            if key in props and (raw or key != "metadata"):
                out += _duplicate_errors(item, props[key], [*raw, key], top)
    elif isinstance(value, list):
        seen: list[Any] = []
        for index, item in enumerate(value):
            if schema.get("x-kubernetes-list-type") == "set" and item in seen:
                out.append(f"{_path([*raw, index], top)}: Duplicate value: {_go(item)}")
            seen.append(item)
            out += _duplicate_errors(item, schema.get("items") or {}, [*raw, index], top)
    return out


@lru_cache(maxsize=1024)
def _program(rule: str) -> Any:
    return cel.compile(rule)


def _typed(value: Any, schema: dict[str, Any]) -> Any:
    """JSON -> CEL value typed by the schema: `number` fields are doubles even when written as 4."""
    if schema.get("type") == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, dict):
        props, addl = schema.get("properties") or {}, schema.get("additionalProperties")
        return {
            k: _typed(v, props.get(k) or (addl if isinstance(addl, dict) else {})) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_typed(v, schema.get("items") or {}) for v in value]
    return value


def _cel_errors(
    value: Any, schema: dict[str, Any], raw: list[str | int], errors: list[str], top: dict[str, Any]
) -> None:
    for rule in schema.get("x-kubernetes-validations") or []:
        if "oldSelf" in _program(rule["rule"]).references()["variables"]:
            continue  # a transition rule: skipped on create
        self_value = _typed(value, schema)
        if not raw:  # the root sees metadata.name and generateName only
            meta = value.get("metadata", {})
            self_value["metadata"] = {k: v for k, v in meta.items() if k in ("name", "generateName")}
        if _program(rule["rule"]).execute({"self": self_value}) is not True:
            where = _path(raw, top) if raw else "<nil>"
            errors.append(f'{where}: Invalid value: "{schema.get("type", "object")}": {rule["message"]}')
    if isinstance(value, dict):
        props, addl = schema.get("properties") or {}, schema.get("additionalProperties")
        for key, item in value.items():
            sub = props.get(key) or (addl if isinstance(addl, dict) else None)
            if sub is not None and (raw or key != "metadata"):
                _cel_errors(item, sub, [*raw, key], errors, top)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            _cel_errors(item, schema["items"], [*raw, index], errors, top)
