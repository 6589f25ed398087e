"""spec.autoscaling: the HPA / KEDA ScaledObject the operator renders (pure builders) and the rules."""

from __future__ import annotations

import re
from typing import Any

import kubernetes_validate
import pytest
from kubetune_operator.builders.autoscaling import build_autoscaler, queue_query
from pydantic import ValidationError
from test_serving_builders import adep

from kubetune.api.autoscaling import MIN_OVER_MAX, SCALE_TO_ZERO


def test_hpa_targets_the_scale_subresource_on_the_queue_per_pod() -> None:
    ad, doc = adep(autoscaling={"minReplicas": 2, "maxReplicas": 8, "targetQueuePerPod": 2.5})
    hpa = build_autoscaler(ad, doc)
    assert hpa is not None and hpa["kind"] == "HorizontalPodAutoscaler"
    kubernetes_validate.validate(hpa, "1.34.0", strict=True)
    spec = hpa["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "AdapterDeployment",
        "name": "support-intents",
    }
    assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 8)
    assert spec["metrics"][0]["pods"]["target"] == {"type": "AverageValue", "averageValue": "2500m"}
    assert spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300
    assert hpa["metadata"]["ownerReferences"][0]["uid"] == "u-1"


def test_keda_scaled_object_sums_the_stable_track_queue() -> None:
    ad, doc = adep(
        autoscaling={"maxReplicas": 4, "keda": True, "targetQueuePerPod": 3},
        monitoring={"prometheusUrl": "https://prometheus.monitoring.example.com"},
    )
    scaled: dict[str, Any] | None = build_autoscaler(ad, doc)
    assert scaled is not None and scaled["kind"] == "ScaledObject"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["metadata"]["serverAddress"] == "https://prometheus.monitoring.example.com"
    assert trigger["metadata"]["threshold"] == "3.0"
    assert trigger["metadata"]["query"] == queue_query(ad)
    assert queue_query(ad) == (
        'sum(kubetune_queue_length{namespace="ml",kubetune_dev_adapterdeployment="support-intents",'
        'kubetune_dev_track="stable"})'
    )
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (1, 4)


def test_no_autoscaling_renders_nothing() -> None:
    ad, doc = adep()
    assert build_autoscaler(ad, doc) is None


@pytest.mark.parametrize(
    ("autoscaling", "message"),
    [
        ({"minReplicas": 5, "maxReplicas": 2}, MIN_OVER_MAX),
        ({"minReplicas": 0, "maxReplicas": 2}, SCALE_TO_ZERO),
        ({"maxReplicas": 2, "targetQueuePerPod": 0}, "greater than 0"),
        ({"maxReplicas": 2, "keda": True}, "autoscaling.keda needs monitoring.prometheusUrl"),
    ],
)
def test_bad_autoscaling_is_refused_by_the_model_too(autoscaling: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message.split(":")[0])):
        adep(autoscaling=autoscaling)
