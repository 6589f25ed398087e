"""The autoscaler of an AdapterDeployment: an autoscaling/v2 HorizontalPodAutoscaler, or a KEDA
ScaledObject, aimed at the AdapterDeployment's scale subresource (pure builders).

Both average ``kubetune_queue_length`` (inference requests waiting or computing) over the pods of the
stable track, whose count is the scale subresource's ``status.replicas``. The HPA reads the metric
through the custom metrics API (``custom.metrics.k8s.io``, served by a metrics adapter such as
prometheus-adapter with a rule for this series; see docs/autoscaling.md); KEDA queries Prometheus
itself.
"""

from __future__ import annotations

from typing import Any

from kubetune.api.adapterdeployment import AdapterDeployment
from kubetune.api.autoscaling import AutoscalingSpec
from kubetune.api.common import GROUP, VERSION
from kubetune.api.telemetry import QUEUE_LENGTH
from kubetune_operator.builders.meta import LABEL_ADAPTERDEPLOYMENT, child_metadata, common_labels
from kubetune_operator.builders.serving import LABEL_TRACK

KEDA_API = "keda.sh/v1alpha1"
HPA_API = "autoscaling/v2"


def _target(ad: AdapterDeployment) -> dict[str, str]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "AdapterDeployment", "name": ad.metadata.name}


def _quantity(value: float) -> str:
    """A Kubernetes quantity: whole numbers as they are, fractions in milli-units (2.5 -> 2500m)."""
    return str(int(value)) if float(value).is_integer() else f"{round(value * 1000)}m"


def _behavior(spec: AutoscalingSpec) -> dict[str, Any]:
    return {
        "scaleUp": {"stabilizationWindowSeconds": spec.scale_up_stabilization_seconds},
        "scaleDown": {"stabilizationWindowSeconds": spec.scale_down_stabilization_seconds},
    }


def build_hpa(ad: AdapterDeployment, owner: dict[str, Any]) -> dict[str, Any]:
    spec = ad.spec.autoscaling
    assert spec is not None
    return {
        "apiVersion": HPA_API,
        "kind": "HorizontalPodAutoscaler",
        "metadata": child_metadata(owner, ad.metadata.name, common_labels(ad.metadata.name, "autoscaler")),
        "spec": {
            "scaleTargetRef": _target(ad),
            "minReplicas": spec.min_replicas,
            "maxReplicas": spec.max_replicas,
            "metrics": [
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": QUEUE_LENGTH},
                        "target": {
                            "type": "AverageValue",
                            "averageValue": _quantity(spec.target_queue_per_pod),
                        },
                    },
                }
            ],
            "behavior": _behavior(spec),
        },
    }


def queue_query(ad: AdapterDeployment) -> str:
    """PromQL: requests waiting or computing on the stable track's pods, summed. The pod labels come
    from the PodMonitor's podTargetLabels (``kubetune.dev/track`` -> ``kubetune_dev_track``)."""
    labels = {LABEL_ADAPTERDEPLOYMENT: ad.metadata.name, LABEL_TRACK: "stable"}
    matchers = [f'namespace="{ad.metadata.namespace or "default"}"'] + [
        f'{_prometheus_label(k)}="{v}"' for k, v in sorted(labels.items())
    ]
    return f"sum({QUEUE_LENGTH}{{{','.join(matchers)}}})"


def _prometheus_label(name: str) -> str:
    """How Prometheus names a Kubernetes label it copies from a target (invalid characters -> _)."""
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name)


def build_scaled_object(ad: AdapterDeployment, owner: dict[str, Any]) -> dict[str, Any]:
    spec = ad.spec.autoscaling
    url = ad.spec.monitoring.prometheus_url
    assert spec is not None and url is not None
    return {
        "apiVersion": KEDA_API,
        "kind": "ScaledObject",
        "metadata": child_metadata(owner, ad.metadata.name, common_labels(ad.metadata.name, "autoscaler")),
        "spec": {
            "scaleTargetRef": _target(ad),
            "minReplicaCount": spec.min_replicas,
            "maxReplicaCount": spec.max_replicas,
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": _behavior(spec)}},
            "triggers": [
                {
                    "type": "prometheus",
                    "metricType": "AverageValue",
                    "metadata": {
                        "serverAddress": url,
                        "query": queue_query(ad),
                        "threshold": str(spec.target_queue_per_pod),
                    },
                }
            ],
        },
    }


def build_autoscaler(ad: AdapterDeployment, owner: dict[str, Any]) -> dict[str, Any] | None:
    """The autoscaler spec.autoscaling asks for (None without autoscaling)."""
    if ad.spec.autoscaling is None:
        return None
    return build_scaled_object(ad, owner) if ad.spec.autoscaling.keda else build_hpa(ad, owner)
