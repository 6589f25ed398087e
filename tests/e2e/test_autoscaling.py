"""Autoscaling that Kubernetes owns, for real: real `kubetune serve` pods (the test's kubelet runs them)
export their queue (``kubetune_queue_length``: requests waiting or computing), a real Prometheus scrapes
them, the real prometheus-adapter serves it as ``custom.metrics.k8s.io`` through the aggregation layer,
and the real HPA controller in kube-controller-manager scales the AdapterDeployment through its scale
subresource: up under bounded loopback load, down once the load stops, while a canary in progress keeps
its weight and its share of the pods follows the new total.

The times from load start to the HPA's scale-up and from load stop to its scale-down are printed (run
with ``-s``); they are not asserted (they depend on the machine's load), only bounded by the waits."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from controlplane import Cluster
from controlplane.external import ExternalCluster
from controlplane.metrics_adapter import MetricsAdapter, pods_rule
from controlplane.plane import ControlPlane
from integration.ftj_helpers import bind_claims
from integration.test_serve_helpers import LABELS, MINILM, make_adapters
from kubelet import Kubelet, scrape_kubelet_targets
from loop_helpers import ROOT, wait
from operator_process import Operator
from promserver import Prometheus

from kubetune.api.telemetry import QUEUE_LENGTH

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="Debian prometheus not installed"),
]

ADEP = "support-intents"
MAX_REPLICAS = 3
CANARY_WEIGHT = 50
TARGET_PER_POD = 2  # requests waiting or computing per pod
CLIENTS = 8  # concurrent loopback clients: ~8 queued on one pod asks for 4 pods, capped at MAX_REPLICAS
LOAD_LIMIT_S, LOAD_LIMIT_REQUESTS = 150.0, 50_000  # the load stops by itself at either bound
START_TIMEOUT = 300  # a serving pod loads MiniLM on 2 shared cores


class Load:
    """CLIENTS threads posting /v1/classify to the Service's ready pods (kube-proxy's view: the
    kubelet's ``service_urls``) back to back, until ``stop()`` or a bound."""

    def __init__(self, kubelet: Kubelet) -> None:
        self.kubelet = kubelet
        self.sent = 0
        self.answered = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(CLIENTS)
        ]

    def __enter__(self) -> Load:
        self.started = time.monotonic()
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _client(self, index: int) -> None:
        with httpx.Client(timeout=30) as client:
            n = index
            while not self._stop.is_set() and time.monotonic() - self.started < LOAD_LIMIT_S:
                with self._lock:
                    if self.sent >= LOAD_LIMIT_REQUESTS:
                        return
                    self.sent += 1
                urls = self.kubelet.service_urls(ADEP)
                if not urls:
                    self._stop.wait(0.2)
                    continue
                n += 1
                body = {"model": ADEP, "input": f"my invoice {n} was charged twice, please refund it"}
                try:
                    ok = client.post(f"{urls[n % len(urls)]}/v1/classify", json=body).status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    with self._lock:
                        self.answered += 1


def replicas(cluster: Cluster) -> tuple[int, int]:
    """The scale subresource's view: (spec.replicas, status.replicas)."""
    scale = cluster.request("GET", cluster.path("adep", cluster.ns, ADEP, "scale"))
    return int(scale["spec"].get("replicas") or 0), int(scale.get("status", {}).get("replicas") or 0)


def canary(cluster: Cluster) -> tuple[int | None, int | None]:
    """(the AdapterDeployment's canary weight, the canary Deployment's replicas)."""
    ad = cluster.get("adep", cluster.ns, ADEP) or {}
    deployment = cluster.get("deployments.apps", cluster.ns, f"{ADEP}-canary") or {}
    weight = ((ad.get("status") or {}).get("canary") or {}).get("weight")
    return weight, deployment.get("spec", {}).get("replicas")


def active_adapter(cluster: Cluster) -> dict[str, Any] | None:
    return ((cluster.get("adep", cluster.ns, ADEP) or {}).get("status") or {}).get("activeAdapter")


def hpa(cluster: Cluster) -> dict[str, Any] | None:
    return cluster.get("horizontalpodautoscalers.autoscaling", cluster.ns, ADEP)


def queue_per_pod(adapter: MetricsAdapter, ns: str) -> dict[str, float]:
    """The custom metrics API's answer for every pod of ``ns``, as the HPA controller reads it."""
    items = (adapter.raw(f"/namespaces/{ns}/pods/*/{QUEUE_LENGTH}") or {}).get("items", [])
    return {i["describedObject"]["name"]: _quantity(i["value"]) for i in items}


def _quantity(text: str) -> float:
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def test_hpa_scales_an_adapterdeployment_on_its_queue_through_a_real_metrics_adapter(
    control_plane: ControlPlane | ExternalCluster, cluster: Cluster, operator: Operator, tmp_path: Path
) -> None:
    if isinstance(control_plane, ExternalCluster):
        pytest.skip("the metrics adapter registers with the test control plane's own aggregation layer")
    bind_claims(cluster)
    pvc = tmp_path / "pvc"
    seeds = {"v1": 1, "v2": 2}
    make_adapters(MINILM, "sequence-classification", pvc / "kubetune-output" / "adapters", seeds, LABELS)
    kubelet = Kubelet(cluster, tmp_path / "kubelet", pvc).start()
    try:
        with (
            Prometheus(tmp_path / "prometheus", []) as prom,
            MetricsAdapter(
                control_plane, prom.url, [pods_rule(QUEUE_LENGTH)], tmp_path / "adapter"
            ) as adapter,
        ):
            scrape_kubelet_targets(prom, kubelet)
            _scale_up_and_down(cluster, operator, kubelet, adapter)
    finally:
        kubelet.stop()
    assert not kubelet.errors, kubelet.errors


def _scale_up_and_down(
    cluster: Cluster, operator: Operator, kubelet: Kubelet, adapter: MetricsAdapter
) -> None:
    doc = yaml.safe_load((ROOT / "examples/k8s/adapterdeployment-support-intents.yaml").read_text())
    doc["spec"]["adapter"] = {"uri": "pvc://kubetune-output/adapters/v1"}
    doc["spec"]["task"] = "sequence-classification"
    doc["spec"]["replicas"] = 1
    doc["spec"]["resources"] = {"cpu": "1", "memory": "1Gi"}
    # A canary that stays at its first step for the whole test (its pause outlasts it).
    doc["spec"]["rollout"] = {
        "strategy": "Canary",
        "steps": [{"weight": CANARY_WEIGHT, "pauseSeconds": 3600}],
    }
    doc["spec"]["autoscaling"] = {
        "minReplicas": 1,
        "maxReplicas": MAX_REPLICAS,
        "targetQueuePerPod": TARGET_PER_POD,
        "scaleDownStabilizationSeconds": 10,
    }
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))
    wait(cluster, kubelet, operator, lambda: kubelet.service_urls(ADEP), "a ready serving pod", START_TIMEOUT)

    # The custom metrics API serves the pod's queue (idle: 0) from Prometheus, as `kubectl get --raw`.
    served = wait(
        cluster, kubelet, operator, lambda: queue_per_pod(adapter, cluster.ns), "custom metric served", 60
    )
    assert set(served.values()) == {0.0}, served
    rendered = wait(cluster, kubelet, operator, lambda: hpa(cluster), "the operator's HPA", 60)
    assert rendered["spec"]["scaleTargetRef"]["kind"] == "AdapterDeployment"
    # A canary needs a champion: v1 must be the active adapter first (a ready pod alone can come before
    # the operator records it; a new version arriving before that is a first rollout, not a canary).
    wait(cluster, kubelet, operator, lambda: active_adapter(cluster), "v1 active", 60)
    # A new adapter goes out as a canary on CANARY_WEIGHT % of the pods, on top of the stable track.
    patch = {"spec": {"adapter": {"uri": "pvc://kubetune-output/adapters/v2"}}}
    cluster.kubectl("patch", "adep", ADEP, "--type=merge", "-p", json.dumps(patch))
    wait(cluster, kubelet, operator, lambda: canary(cluster) == (CANARY_WEIGHT, 1), "canary on 1 pod", 60)
    # The HPA controller reads the metric through the aggregation layer (ScalingActive once it can).
    wait(
        cluster,
        kubelet,
        operator,
        lambda: any(
            c["type"] == "ScalingActive" and c["status"] == "True"
            for c in (hpa(cluster) or {}).get("status", {}).get("conditions") or []
        ),
        "HPA ScalingActive",
        60,
    )

    with Load(kubelet) as load:
        wait(cluster, kubelet, operator, lambda: replicas(cluster)[0] == MAX_REPLICAS, "HPA scale-up", 120)
        scaled_up_s = time.monotonic() - load.started
        busiest = max(queue_per_pod(adapter, cluster.ns).values())
        # The operator sizes the stable track from spec.replicas: the scale subresource's status follows.
        wait(
            cluster,
            kubelet,
            operator,
            lambda: replicas(cluster) == (MAX_REPLICAS, MAX_REPLICAS),
            f"{MAX_REPLICAS} serving pods",
            60,
        )
        # The canary keeps its weight; its pods follow the new total (ceil(3 * 50%) = 2).
        wait(
            cluster, kubelet, operator, lambda: canary(cluster) == (CANARY_WEIGHT, 2), "canary on 2 pods", 60
        )
        load.stop()
        stopped = time.monotonic()
    assert load.answered > 0, (load.sent, load.answered)
    assert busiest > TARGET_PER_POD, busiest
    # Idle pods (the new ones still loading their model export 0 too): back to minReplicas.
    wait(cluster, kubelet, operator, lambda: replicas(cluster)[0] == 1, "HPA scale-down", 120)
    scaled_down_s = time.monotonic() - stopped
    wait(cluster, kubelet, operator, lambda: replicas(cluster) == (1, 1), "1 serving pod", 120)
    wait(
        cluster, kubelet, operator, lambda: canary(cluster) == (CANARY_WEIGHT, 1), "canary back on 1 pod", 60
    )
    print(
        f"autoscaling: load of {CLIENTS} clients ({load.answered}/{load.sent} answered); busiest pod "
        f"queue {busiest:g} (target {TARGET_PER_POD}); HPA at {MAX_REPLICAS} replicas {scaled_up_s:.0f} s "
        f"after the load started, back at 1 {scaled_down_s:.0f} s after it stopped"
    )
