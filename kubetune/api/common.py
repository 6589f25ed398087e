"""Shared building blocks of the API models: base model, URIs, secret refs, conditions."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "kubetune.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"

# A path segment: no spaces, no shell metacharacters. ".." is rejected separately with its own message.
_SEG = r"[A-Za-z0-9._@=+-]+"
PVC_URI = rf"pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/{_SEG})*/?"
S3_URI = rf"s3://[a-z0-9][a-z0-9.-]{{1,61}}[a-z0-9](/{_SEG})*/?"
HTTPS_URI = r"https://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~%!$&'()*+,;=:@/?-]*)?"
CONFIGMAP_URI = r"configmap://[a-z0-9]([-a-z0-9]*[a-z0-9])?/[-._a-zA-Z0-9]+"
PKG_URI = r"pkg://[A-Za-z0-9][A-Za-z0-9._-]*"
HF_ID = r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?"
ABS_PATH = rf"(/{_SEG})+/?"

DATA_URI_PATTERN = f"^({PVC_URI}|{S3_URI}|{HTTPS_URI}|{CONFIGMAP_URI})$"
OUTPUT_URI_PATTERN = f"^({PVC_URI}|{S3_URI})$"
MODEL_NAME_PATTERN = f"^({PKG_URI}|{PVC_URI}|{S3_URI}|{HTTPS_URI}|{ABS_PATH}|{HF_ID})$"

# CEL twin of ``reject_traversal``: the API server rejects it before the operator ever sees it.
NO_TRAVERSAL_RULE: dict[str, Any] = {
    "rule": "!self.matches('(^|/)[.][.](/|$)')",
    "message": "must not contain '..' path segments (path traversal)",
}


def reject_traversal(value: str) -> str:
    """Reject URIs and paths with a ``..`` segment; used by validators of every location field."""
    if re.search(r"(^|/)\.\.(/|$)", value):
        raise ValueError(f"{value!r} must not contain '..' path segments (path traversal)")
    return value


def _location(pattern: str, what: str, accepted: str) -> Any:
    """A location field: one readable message for a wrong scheme/shape, one for traversal.

    The regex sits in a CEL rule (not `pattern`) so the API server answers with ``accepted`` instead of
    echoing the regex; pydantic runs the same regex with the same message for local runs.
    """
    message = f"must be {accepted}"

    def check(value: str) -> str:
        if not re.fullmatch(pattern.strip("^$"), value):
            raise ValueError(f"{value!r} {message}")
        return reject_traversal(value)

    return (
        Field(
            description=f"{what} One of: {accepted}.",
            max_length=2048,
            json_schema_extra={
                "x-kubernetes-validations": [
                    {"rule": f'self.matches(r"{pattern}")', "message": message},
                    NO_TRAVERSAL_RULE,
                ]
            },
        ),
        AfterValidator(check),
    )


_DATA_FIELD, _DATA_CHECK = _location(
    DATA_URI_PATTERN,
    "Dataset location.",
    "pvc://<claim>/<path>, s3://<bucket>/<key>, https://<host>/<path> or configmap://<name>/<key>",
)
_OUT_FIELD, _OUT_CHECK = _location(
    OUTPUT_URI_PATTERN,
    "Where the adapter, checkpoints and metrics go.",
    "pvc://<claim>/<path> or s3://<bucket>/<prefix>",
)
_MODEL_FIELD, _MODEL_CHECK = _location(
    MODEL_NAME_PATTERN,
    "The pretrained base model.",
    "a Hugging Face id (org/name), an absolute path in the image, pkg://<python-distribution> "
    "(model files shipped in a Python package), pvc://<claim>/<path>, s3://<bucket>/<prefix> "
    "or https://<url>",
)
DataUri = Annotated[str, _DATA_FIELD, _DATA_CHECK]
OutputUri = Annotated[str, _OUT_FIELD, _OUT_CHECK]
ModelName = Annotated[str, _MODEL_FIELD, _MODEL_CHECK]


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

    name: Annotated[str, Field(description="Name of the Secret.", max_length=253, pattern=DNS1123_SUBDOMAIN)]
    key: Annotated[
        str,
        Field(description="Key inside the Secret.", max_length=253, pattern=r"^[-._a-zA-Z0-9]+$"),
    ]


class SecretRef(ApiModel):
    """A whole Secret whose keys become environment variables (e.g. AWS_ACCESS_KEY_ID, HF_TOKEN)."""

    name: Annotated[str, Field(description="Name of the Secret.", max_length=253, pattern=DNS1123_SUBDOMAIN)]


class Toleration(ApiModel):
    """A core/v1 Toleration, typed."""

    key: Annotated[str | None, Field(description="Taint key to tolerate.", max_length=316)] = None
    operator: Annotated[
        Literal["Exists", "Equal"] | None, Field(description="Exists or Equal (default Equal).")
    ] = None
    value: Annotated[str | None, Field(description="Taint value for Equal.", max_length=63)] = None
    effect: Annotated[
        Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None,
        Field(description="Taint effect to tolerate; empty means all."),
    ] = None
    toleration_seconds: Annotated[
        int | None, Field(description="How long a NoExecute taint is tolerated.", ge=0)
    ] = None


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
