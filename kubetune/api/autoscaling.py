"""spec.autoscaling of an AdapterDeployment: Kubernetes' own autoscalers size the serving pods.

The operator renders an ``autoscaling/v2`` HorizontalPodAutoscaler (or, with ``keda: true``, a KEDA
ScaledObject) whose target is the AdapterDeployment's scale subresource; the autoscaler writes
``spec.replicas`` and the operator sizes both rollout tracks from it, so nothing fights over it.
The metric is the server's ``kubetune_queue_length`` (inference requests admitted, waiting or
computing) averaged over the stable track's pods.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from kubetune.api.common import ApiModel

MAX_REPLICAS = 1000
SCALE_TO_ZERO = (
    "autoscaling.minReplicas 0 (scale to zero) has no cold-start path: a Service with no pods refuses "
    "requests and no pod exports the queue metric that would scale it up again; use minReplicas >= 1"
)
MIN_OVER_MAX = "autoscaling.minReplicas must not exceed autoscaling.maxReplicas"


class AutoscalingSpec(ApiModel):
    """Scale the serving pods on the server's queue (waiting + running requests per pod)."""

    min_replicas: Annotated[
        int, Field(description="Fewest serving pods (at least 1).", ge=0, le=MAX_REPLICAS)
    ] = 1
    max_replicas: Annotated[int, Field(description="Most serving pods.", ge=1, le=MAX_REPLICAS)]
    target_queue_per_pod: Annotated[
        float,
        Field(
            description="Requests waiting or computing per stable-track pod (kubetune_queue_length) the "
            "autoscaler keeps on average; above it pods are added.",
            gt=0,
            le=10_000,
        ),
    ] = 4.0
    scale_up_stabilization_seconds: Annotated[
        int,
        Field(description="Window over which scale-up recommendations are smoothed.", ge=0, le=3600),
    ] = 0
    scale_down_stabilization_seconds: Annotated[
        int,
        Field(
            description="Window of past recommendations the highest of which a scale-down keeps (stops "
            "flapping when traffic dips for a moment).",
            ge=0,
            le=3600,
        ),
    ] = 300
    keda: Annotated[
        bool,
        Field(
            description="Render a KEDA ScaledObject (Prometheus trigger on monitoring.prometheusUrl) "
            "instead of a HorizontalPodAutoscaler; KEDA must be installed."
        ),
    ] = False

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {"rule": "self.minReplicas >= 1", "message": SCALE_TO_ZERO},
                {"rule": "self.minReplicas <= self.maxReplicas", "message": MIN_OVER_MAX},
            ]
        }
    }

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingSpec:
        if self.min_replicas < 1:
            raise ValueError(SCALE_TO_ZERO)
        if self.min_replicas > self.max_replicas:
            raise ValueError(MIN_OVER_MAX)
        return self
