"""AdapterDeployment: serve a base model with a LoRA adapter from a FineTuneJob or a URI."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from kubetune.api.common import DNS1123_SUBDOMAIN, ApiModel, Condition, ObjectMeta
from kubetune.api.finetunejob import BaseModelSpec

AdapterPhase = Literal["Pending", "Progressing", "Available", "Degraded"]


class FineTuneJobRef(ApiModel):
    """A FineTuneJob in the same namespace."""

    name: Annotated[str, Field(description="FineTuneJob name.", max_length=253, pattern=DNS1123_SUBDOMAIN)]


class AdapterSource(ApiModel):
    """Where the adapter comes from: exactly one of fineTuneJobRef and uri."""

    fine_tune_job_ref: Annotated[
        FineTuneJobRef | None, Field(description="Serve the adapter this FineTuneJob produced.")
    ] = None
    uri: Annotated[
        str | None,
        Field(
            description="Adapter location (pvc://, s3://, https://).",
            max_length=2048,
            pattern=r"^(pvc|s3|https)://[^\s]+$",
            json_schema_extra={
                "x-kubernetes-validations": [
                    {
                        "rule": "!self.matches('(^|/)[.][.](/|$)')",
                        "message": "must not contain '..' path segments (path traversal)",
                    }
                ]
            },
        ),
    ] = None
    version: Annotated[
        str | None, Field(description="Pin a version from status.history (rollback).", max_length=128)
    ] = None

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.fineTuneJobRef) != has(self.uri)",
                    "message": "set exactly one of adapter.fineTuneJobRef and adapter.uri",
                },
            ]
        }
    }

    @model_validator(mode="after")
    def _one_source(self) -> AdapterSource:
        if (self.fine_tune_job_ref is None) == (self.uri is None):
            raise ValueError("set exactly one of adapter.fineTuneJobRef and adapter.uri")
        return self


class AdapterDeploymentSpec(ApiModel):
    """Desired state of an AdapterDeployment."""

    base_model: Annotated[BaseModelSpec, Field(description="The base model the server loads once.")]
    adapter: Annotated[AdapterSource, Field(description="The adapter to serve.")]
    replicas: Annotated[int, Field(description="Serving pods.", ge=0, le=1000)] = 1


class ActiveAdapter(ApiModel):
    """The adapter the pods serve now."""

    version: str | None = None
    digest: str | None = None
    fine_tune_job: str | None = None
    accuracy: float | None = None


class AdapterDeploymentStatus(ApiModel):
    """Observed state of an AdapterDeployment."""

    phase: Annotated[AdapterPhase | None, Field(description="Lifecycle phase.")] = None
    message: str | None = None
    observed_generation: Annotated[int | None, Field(ge=0)] = None
    conditions: list[Condition] = []
    active_adapter: ActiveAdapter | None = None
    ready_replicas: Annotated[int, Field(ge=0)] = 0


class AdapterDeployment(ApiModel):
    """The whole custom resource as the operator reads it."""

    model_config = {"extra": "ignore"}

    api_version: str = "kubetune.dev/v1alpha1"
    kind: Literal["AdapterDeployment"] = "AdapterDeployment"
    metadata: ObjectMeta = ObjectMeta()
    spec: AdapterDeploymentSpec
    status: AdapterDeploymentStatus = AdapterDeploymentStatus()
