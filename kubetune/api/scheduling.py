"""Placement and resource fields shared by training and serving pods, checked the way the Kubernetes
API checks them on a pod, so a careless value fails at admission instead of at pod creation."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from kubetune.api.common import SUBDOMAIN_RULE, ApiModel
from kubetune.api.rules import Checked, Rule, enforce

_PREFIX = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_KEY = rf"({_PREFIX}/)?{_NAME}"
_KEY_MESSAGE = (
    "must be a label key: an optional DNS subdomain prefix of at most 253 characters and '/', then a "
    "name of at most 63 letters, digits, '-', '_' or '.' that starts and ends with a letter or digit"
)
_LONG_PREFIX = r"^[^/]{254,}/"
LABEL_VALUE_RULES = (
    Rule(
        "must be a label value: at most 63 letters, digits, '-', '_' or '.' that starts and ends with a "
        "letter or digit, or empty",
        require=rf"^({_NAME})?$",
    ),
)
SELECTOR_KEY_RULES = (
    Rule(f"every key {_KEY_MESSAGE}", require=rf"^{_KEY}$"),
    Rule(f"every key {_KEY_MESSAGE}", deny=_LONG_PREFIX),
)
TAINT_KEY_RULES = (
    Rule(f"{_KEY_MESSAGE} (or empty)", require=rf"^({_KEY})?$"),
    Rule(f"{_KEY_MESSAGE} (or empty)", deny=_LONG_PREFIX),
)

LabelValue = Annotated[str, Checked("A label value.", 63, *LABEL_VALUE_RULES)]
NodeSelector = Annotated[
    dict[Annotated[str, AfterValidator(enforce(SELECTOR_KEY_RULES, "key "))], LabelValue],
    Field(
        description="Node labels the pods require.",
        max_length=64,
        json_schema_extra={"x-kubernetes-validations": [r.cel_for_keys() for r in SELECTOR_KEY_RULES]},
    ),
]
# "0", "0m", "0.0Gi": request = limit = 0 (a pod with no memory at all); omit the field instead.
ZERO_QUANTITY = r"^0*([.]0*)?[A-Za-z]*$"
ZERO_MESSAGE = "must be greater than zero (omit it to leave the pod without this request and limit)"
CpuQuantity = Annotated[
    str | None,
    Checked(
        "CPU request/limit, e.g. '8' or '500m'.",
        16,
        Rule(
            "must be a CPU quantity such as 500m, 2 or 1.5 (at most 9999 cores)",
            require=r"^([0-9]{1,7}m|[0-9]{1,4}([.][0-9]{1,3})?)$",
        ),
        Rule(ZERO_MESSAGE, deny=ZERO_QUANTITY),
    ),
]
MemoryQuantity = Annotated[
    str | None,
    Checked(
        "Memory request/limit, e.g. '64Gi'.",
        24,
        Rule(
            "must be a memory quantity such as 512Mi, 16Gi or 1.5Ti (suffix Ki, Mi, Gi, Ti, Pi, k, M, G, "
            "T or P after at most 6 digits), or a plain number of bytes",
            require=r"^([0-9]{1,6}([.][0-9]{1,3})?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)|[0-9]{1,15})$",
        ),
        Rule(ZERO_MESSAGE, deny=ZERO_QUANTITY),
    ),
]
GpuResource = Annotated[
    str,
    Checked(
        "Extended resource name of the GPU.",
        253,
        Rule(
            "must be an extended resource name <domain>/<name>, e.g. nvidia.com/gpu or amd.com/gpu",
            require=rf"^{_PREFIX}/[a-z0-9]([-a-z0-9_.]{{0,61}}[a-z0-9])?$",
        ),
    ),
]
ONE_YEAR = 365 * 86400

_TOLERATION_RULES = (
    (
        "!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''",
        "tolerations: value must be empty when operator is Exists",
    ),
    (
        "(has(self.key) && self.key != '') || (has(self.operator) && self.operator == 'Exists')",
        "tolerations: operator must be Exists when key is empty (that tolerates every taint)",
    ),
    (
        "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
        "tolerations: tolerationSeconds applies only to effect NoExecute",
    ),
    (
        "has(self.key) && self.key != ''",
        "tolerations: key is required: an empty key with operator Exists tolerates every taint, the "
        "control plane's included; name the taint to tolerate",
    ),
)


class Toleration(ApiModel):
    """A core/v1 Toleration, with the checks the API server makes on a pod's tolerations."""

    key: Annotated[
        str | None,
        Checked("Taint key to tolerate (required: a wildcard toleration is refused).", 316, *TAINT_KEY_RULES),
    ] = None
    operator: Annotated[
        Literal["Exists", "Equal"] | None, Field(description="Exists or Equal (default Equal).")
    ] = None
    value: Annotated[str | None, Checked("Taint value for Equal.", 63, *LABEL_VALUE_RULES)] = None
    effect: Annotated[
        Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None,
        Field(description="Taint effect to tolerate; empty means all."),
    ] = None
    toleration_seconds: Annotated[
        int | None,
        Field(
            description="How long a NoExecute taint is tolerated; at most a year (omit: forever).",
            ge=0,
            le=ONE_YEAR,
        ),
    ] = None

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [{"rule": rule, "message": msg} for rule, msg in _TOLERATION_RULES]
        }
    }

    @model_validator(mode="after")
    def _consistent(self) -> Toleration:
        if self.operator == "Exists" and self.value:
            raise ValueError(_TOLERATION_RULES[0][1])
        if not self.key and self.operator != "Exists":
            raise ValueError(_TOLERATION_RULES[1][1])
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError(_TOLERATION_RULES[2][1])
        if not self.key:
            raise ValueError(_TOLERATION_RULES[3][1])
        return self


# The API server admits these two classes outside kube-system for pods; through the operator they would
# let anyone who may create a FineTuneJob preempt the cluster's own components.
SYSTEM_PRIORITY = Rule(
    "must not be system-node-critical or system-cluster-critical (reserved for the cluster's own "
    "components); ask the cluster admin for a class on the chart's allowedPriorityClasses",
    deny=r"^system-(node|cluster)-critical$",
)
PriorityClassName = Annotated[
    str | None,
    Checked(
        "PriorityClass of the pods; the operator accepts only the chart's allowedPriorityClasses.",
        253,
        SUBDOMAIN_RULE,
        SYSTEM_PRIORITY,
    ),
]
