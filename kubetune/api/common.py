"""Shared building blocks of the API models: base model, URIs, secret refs, conditions."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from kubetune.api import uris
from kubetune.api.rules import Checked, Rule
from kubetune.api.uris import TRAVERSAL

GROUP = "kubetune.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"

# CEL twin of ``reject_traversal``: the API server rejects it before the operator ever sees it.
NO_TRAVERSAL_RULE: dict[str, Any] = TRAVERSAL.cel()


def reject_traversal(value: str) -> str:
    """Reject URIs and paths with a ``..`` segment; used by validators of every location field."""
    if TRAVERSAL.broken_by(value):
        raise ValueError(f"{value!r} {TRAVERSAL.message}")
    return value


def _location(what: str, accepted: str, rules: tuple[Rule, ...]) -> Checked:
    """A location field: one readable message per rule (wrong scheme or shape, traversal, unsafe host).

    The regexes sit in CEL rules (not `pattern`) so the API server answers with the message instead of
    echoing a regex; pydantic runs the same rules with the same messages for local runs, and
    ``kubetune.api.uris.check_uri`` runs them again right before a fetch.
    """
    return Checked(f"{what} One of: {accepted}.", 2048, *rules)


DataUri = Annotated[str, _location("Dataset location.", uris.DATA_ACCEPTED, uris.DATA_RULES)]
OutputUri = Annotated[
    str, _location("Where the adapter, checkpoints and metrics go.", uris.OUTPUT_ACCEPTED, uris.OUTPUT_RULES)
]
ModelName = Annotated[str, _location("The pretrained base model.", uris.MODEL_ACCEPTED, uris.MODEL_RULES)]
AdapterUri = Annotated[str, _location("Adapter folder (peft).", uris.ADAPTER_ACCEPTED, uris.ADAPTER_RULES)]
ChampionUri = Annotated[
    str,
    _location(
        "An adapter to score on the same validation rows (champion/challenger); reported as "
        "champion_<metric>.",
        uris.CHAMPION_ACCEPTED,
        uris.CHAMPION_RULES,
    ),
]
FreshDataUri = Annotated[
    str,
    _location("Where servers keep labelled traffic for retraining.", uris.FRESH_ACCEPTED, uris.FRESH_RULES),
]
PrometheusUrl = Annotated[
    str,
    _location(
        "Prometheus HTTP API the operator queries (no retraining triggers without it); loopback only "
        "makes sense for an operator running outside the cluster.",
        uris.PROMETHEUS_ACCEPTED,
        uris.PROMETHEUS_RULES,
    ),
]

SUBDOMAIN_RULE = Rule(
    "must be a DNS-1123 subdomain: lower-case letters, digits, '-' and '.', starting and ending with "
    "a letter or digit",
    require=DNS1123_SUBDOMAIN,
)
LABEL_RULE = Rule(
    "must be a DNS-1123 label: lower-case letters, digits and '-', starting and ending with a letter or "
    "digit",
    require=DNS1123_LABEL,
)
KEY_RULE = Rule(
    "must be a Secret key: letters, digits, '-', '_' and '.', but not '.', '..' or starting with '..'",
    require=r"^[-._a-zA-Z0-9]+$",
)
NOT_DOTS = Rule(KEY_RULE.message, deny=r"^[.][.]|^[.]$")


RESOURCE_NAME = Rule(
    "metadata.name must be a DNS-1035 label of at most 63 characters (lower-case letters, digits and "
    "'-', starting with a letter): it names the children's Services and is a label value on every pod",
    require=r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$",
)
RESOURCE_NAME_RULE: dict[str, Any] = {
    "rule": RESOURCE_NAME.expression("self.metadata.name"),
    "message": RESOURCE_NAME.message,
}


def check_resource_name(name: str) -> None:
    """The CEL twin of RESOURCE_NAME_RULE for manifests read outside the API server (empty: unnamed)."""
    if name and RESOURCE_NAME.broken_by(name):
        raise ValueError(f"{name[:100]!r}: {RESOURCE_NAME.message}")


def object_name(what: str) -> Checked:
    """A reference to a namespaced object by name (Secret, PriorityClass, FineTuneJob)."""
    return Checked(what, 253, SUBDOMAIN_RULE)


class ApiModel(BaseModel):
    """Base of every API model: camelCase on the wire, unknown fields rejected, values validated."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
    )

    def wire(self) -> dict[str, Any]:
        """The object as Kubernetes sees it: camelCase keys, unset optionals omitted."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class SecretKeyRef(ApiModel):
    """A key in a Secret in the same namespace. Secret values never appear in status, events or logs."""

    name: Annotated[str, object_name("Name of the Secret.")]
    key: Annotated[str, Checked("Key inside the Secret.", 253, KEY_RULE, NOT_DOTS)]


class SecretRef(ApiModel):
    """A whole Secret whose keys become environment variables (e.g. AWS_ACCESS_KEY_ID, HF_TOKEN)."""

    name: Annotated[str, object_name("Name of the Secret.")]


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(ApiModel):
    """A Kubernetes API convention condition."""

    type: Annotated[str, Field(description="Condition type, CamelCase.", max_length=316)]
    status: Annotated[ConditionStatus, Field(description="True, False or Unknown.")]
    reason: Annotated[str, Field(description="CamelCase reason for the last transition.", max_length=1024)]
    message: Annotated[str, Field(description="Human-readable detail.", max_length=32768)] = ""
    last_transition_time: Annotated[
        str,
        Field(description="When status last changed (RFC 3339).", json_schema_extra={"format": "date-time"}),
    ]
    observed_generation: Annotated[
        int | None, Field(description="metadata.generation this condition was computed for.", ge=0)
    ] = None


class ObjectMeta(ApiModel):
    """The part of metadata the operator reads; the API server owns the rest."""

    model_config = ConfigDict(extra="allow")

    name: str = ""
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
