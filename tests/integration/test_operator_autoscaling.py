"""spec.autoscaling on the real control plane: the operator renders an autoscaling/v2 HPA aimed at the
AdapterDeployment's scale subresource, the real HPA controller (in kube-controller-manager) reads and
writes replicas through that subresource, and the serving Deployment follows. KEDA is not installed
here: asking for it is reported, not half-applied. Scaling on the queue metric itself, through a real
metrics adapter and Prometheus, is tests/e2e's autoscaling test."""

from __future__ import annotations

import json
from typing import Any

import yaml
from adep_helpers import ADEP, deployment, ready_pods, succeeded_finetunejob, wait_adep, wait_deployment
from controlplane import Cluster
from ftj_helpers import ROOT, TIMEOUT, bind_claims
from operator_process import Operator

EXAMPLE = ROOT / "examples/k8s/adapterdeployment-support-intents.yaml"


def apply_with(cluster: Cluster, **spec: Any) -> None:
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["spec"].update(spec)
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))


def hpa(cluster: Cluster) -> dict[str, Any] | None:
    return cluster.get("horizontalpodautoscalers.autoscaling", cluster.ns, ADEP)


def test_the_real_hpa_scales_the_adapterdeployment_through_its_scale_subresource(
    cluster: Cluster, operator: Operator
) -> None:
    bind_claims(cluster)
    succeeded_finetunejob(cluster, "sha256:" + "aa" * 32)
    apply_with(
        cluster, replicas=1, autoscaling={"minReplicas": 3, "maxReplicas": 5, "targetQueuePerPod": 2.5}
    )
    wait_deployment(cluster)

    rendered = cluster.wait_for(lambda: hpa(cluster), timeout=TIMEOUT, message="HPA rendered")
    spec = rendered["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "AdapterDeployment",
        "name": ADEP,
    }
    assert (spec["minReplicas"], spec["maxReplicas"]) == (3, 5)
    (metric,) = spec["metrics"]
    assert metric["pods"]["metric"]["name"] == "kubetune_queue_length"
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "2500m"}
    assert rendered["metadata"]["ownerReferences"][0]["kind"] == "AdapterDeployment"

    # Below minReplicas the HPA controller raises spec.replicas through the scale subresource (no
    # metric needed for that); the operator sizes the Deployment from it.
    cluster.wait_for(
        lambda: deployment(cluster)["spec"]["replicas"] == 3, timeout=TIMEOUT, message="HPA scaled to 3"
    )
    ad = cluster.get("adep", cluster.ns, ADEP)
    assert ad is not None and ad["spec"]["replicas"] == 3
    ready_pods(cluster, count=3)
    live = wait_adep(
        cluster, operator, lambda s: s.get("replicas") == 3 and s.get("phase") == "Available", "3"
    )
    (cond,) = [c for c in live["conditions"] if c["type"] == "AutoscalerReady"]
    assert cond["status"] == "True" and "3-5 pods" in cond["message"]
    # The HPA controller read the target's scale: its own status has the AdapterDeployment's count.
    seen = cluster.wait_for(
        lambda: (h := hpa(cluster)) and h.get("status", {}).get("currentReplicas") == 3 and h,
        timeout=TIMEOUT,
        message="HPA status",
    )
    able = [c for c in seen["status"].get("conditions", []) if c["type"] == "AbleToScale"]
    assert able and able[0]["status"] == "True", seen["status"]

    # KEDA asked for where it is not installed: a clear condition and event, and the HPA is gone (no
    # two autoscalers on one target).
    apply_with(
        cluster,
        replicas=3,
        autoscaling={"minReplicas": 3, "maxReplicas": 5, "keda": True},
        monitoring={"prometheusUrl": "https://prometheus.example.com"},
    )
    missing = wait_adep(
        cluster,
        operator,
        lambda s: any(
            c["type"] == "AutoscalerReady" and c["reason"] == "KedaMissing" for c in s["conditions"]
        ),
        "KedaMissing",
    )
    (cond,) = [c for c in missing["conditions"] if c["type"] == "AutoscalerReady"]
    assert cond["status"] == "False" and "KEDA is not installed" in cond["message"]
    cluster.wait_for(lambda: hpa(cluster) is None, timeout=TIMEOUT, message="HPA deleted")
    events = json.loads(cluster.kubectl("get", "events", "-o", "json").stdout)["items"]
    assert any(e["reason"] == "KedaMissing" for e in events)

    # Autoscaling removed: no autoscaler, no condition; replicas stay where the HPA left them.
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["spec"]["replicas"] = 3
    cluster.kubectl("replace", "-f", "-", input=yaml.safe_dump(doc))
    wait_adep(
        cluster,
        operator,
        lambda s: not any(c["type"] == "AutoscalerReady" for c in s["conditions"]),
        "AutoscalerReady condition removed",
    )
    assert hpa(cluster) is None and deployment(cluster)["spec"]["replicas"] == 3
