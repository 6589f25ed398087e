"""Generate the CustomResourceDefinitions in crds/ from the pydantic models (the one source of truth).

Pydantic emits JSON Schema 2020-12; Kubernetes wants a *structural* OpenAPI v3.0 schema: no $ref, no
anyOf-with-null for optionals, boolean exclusiveMinimum, no titles. ``structural()`` does that rewrite.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel

from kubetune.api.adapterdeployment import EXTRA_NAME_RULE, AdapterDeploymentSpec
from kubetune.api.adapterdeployment_status import AdapterDeploymentStatus
from kubetune.api.common import GROUP, RESOURCE_NAME_RULE, VERSION
from kubetune.api.finetunejob import FineTuneJobSpec, FineTuneJobStatus

_DROP = {"title", "$defs", "discriminator"}


def _without_nulls(value: Any) -> Any:
    """A default as the API server may store it: unset optional fields are absent, not null."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    """Resolve every $ref and rewrite JSON Schema constructs into their OpenAPI v3.0 structural form."""
    if isinstance(node, list):
        return [_inline(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _inline(merged, defs)
    any_of = node.get("anyOf")
    if any_of is not None:
        variants = [v for v in any_of if v.get("type") != "null"]
        if len(variants) != 1:
            raise ValueError(f"union types are not structural: {any_of}")
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        if rest.get("default", 0) is None:
            del rest["default"]
        return _inline({**variants[0], **rest}, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key == "properties":
            out[key] = {name: _inline(prop, defs) for name, prop in value.items()}
        elif key == "additionalProperties" and value is False:
            continue  # the API server prunes unknown fields; `false` is not allowed in structural schemas
        elif key == "default" and isinstance(value, dict):
            # The object's whole default, not `{}`: kube-apiserver checks a default against the
            # object's CEL rules before nested defaults apply, so `{}` fails any rule naming a field.
            out[key] = _without_nulls(value)
        else:
            out[key] = _inline(value, defs)
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def structural(model: type[BaseModel]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of a pydantic model."""
    schema = model.model_json_schema(by_alias=True, mode="validation")
    return dict(_inline(schema, schema.get("$defs", {})))


def _crd(
    kind: str,
    plural: str,
    short: str,
    spec: type[BaseModel],
    status: type[BaseModel],
    description: str,
    columns: list[dict[str, Any]],
    rules: list[dict[str, Any]] | None = None,
    scale: dict[str, str] | None = None,
) -> dict[str, Any]:
    spec_schema = structural(spec)
    status_schema = structural(status)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}", "labels": {"app.kubernetes.io/part-of": "kubetune"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short],
                "categories": ["kubetune", "ml"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}, **({"scale": scale} if scale else {})},
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": description,
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                            **({"x-kubernetes-validations": rules} if rules else {}),
                        }
                    },
                }
            ],
        },
    }


# Fields of a FineTuneJob that may change after it started; every other spec field is frozen, the
# way a batch/v1 Job's pod template is (GitOps tools then fail loudly instead of drifting silently).
MUTABLE_AFTER_START = ("suspend", "activeDeadlineSeconds", "maxPreemptions")
FROZEN_AFTER_START = tuple(
    name
    for name in FineTuneJobSpec.model_json_schema(by_alias=True)["properties"]
    if name not in MUTABLE_AFTER_START
)


def _immutability_rule() -> dict[str, Any]:
    started = (
        "has(oldSelf.status) && has(oldSelf.status.phase) && "
        "(oldSelf.status.phase in ['ValidatingData', 'Running', 'Succeeded', 'Failed', 'Cancelled'] || "
        "has(oldSelf.status.startTime))"
    )
    same = " && ".join(
        f"(has(self.spec.{f}) == has(oldSelf.spec.{f}) && "
        f"(!has(self.spec.{f}) || self.spec.{f} == oldSelf.spec.{f}))"
        for f in FROZEN_AFTER_START
    )
    return {
        "rule": f"!({started}) || ({same})",
        "message": "spec is immutable once the job has started: only "
        + ", ".join(MUTABLE_AFTER_START)
        + " may change; create a new FineTuneJob to train again",
        "fieldPath": ".spec",
        "reason": "FieldValueForbidden",
    }


def finetunejob_crd() -> dict[str, Any]:
    return _crd(
        "FineTuneJob",
        "finetunejobs",
        "ftj",
        FineTuneJobSpec,
        FineTuneJobStatus,
        "A LoRA fine-tune of a pretrained base model on a domain dataset, evaluated before and after.",
        [
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Progress", "type": "string", "jsonPath": ".status.progress"},
            {"name": "Loss", "type": "number", "jsonPath": ".status.loss"},
            {"name": "Accuracy", "type": "number", "jsonPath": ".status.accuracy"},
            {"name": "Model", "type": "string", "jsonPath": ".spec.baseModel.name", "priority": 1},
            # -o wide: why a Pending job waits (a stuck pod's own reason) without a describe.
            {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 1},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
        rules=[RESOURCE_NAME_RULE, _immutability_rule()],
    )


def adapterdeployment_crd() -> dict[str, Any]:
    return _crd(
        "AdapterDeployment",
        "adapterdeployments",
        "adep",
        AdapterDeploymentSpec,
        AdapterDeploymentStatus,
        "Serves a base model with a LoRA adapter, rolls out new adapters, watches drift and accuracy.",
        [
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Adapter", "type": "string", "jsonPath": ".status.activeAdapter.version"},
            {"name": "Accuracy", "type": "number", "jsonPath": ".status.activeAdapter.accuracy"},
            {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"},
            {"name": "Runtime", "type": "string", "jsonPath": ".spec.runtime.engine", "priority": 1},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
        rules=[RESOURCE_NAME_RULE, EXTRA_NAME_RULE],
        # kubectl scale, an HPA or a KEDA ScaledObject set spec.replicas; status.replicas and the
        # selector count the stable track's pods only (a canary adds its share on top of them).
        scale={
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        },
    )


def all_crds() -> dict[str, dict[str, Any]]:
    """File name in crds/ -> CRD object."""
    return {
        "kubetune.dev_finetunejobs.yaml": finetunejob_crd(),
        "kubetune.dev_adapterdeployments.yaml": adapterdeployment_crd(),
    }


def render(crd: dict[str, Any]) -> str:
    header = "# Generated by `kubetune crds` from kubetune/api; do not edit by hand.\n"
    return header + str(yaml.safe_dump(crd, sort_keys=False, width=100))
