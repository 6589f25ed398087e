"""Canary rollouts through the real operator with a real Prometheus, on the real control plane: a worse
canary is rolled back and never retried; a good one walks its steps and replaces the champion. The
real Deployment controller runs both tracks; the test plays the readiness prober for their pods."""

from __future__ import annotations

import shutil
import time

import pytest
import yaml
from adep_helpers import (
    CANARY,
    STABLE,
    active_version,
    ready_pods,
    reasons,
    succeeded_finetunejob,
    template_version,
    wait_adep,
    wait_deployment,
    wait_template_version,
)
from controlplane import Cluster
from ftj_helpers import ROOT, TIMEOUT, bind_claims
from operator_process import Operator
from promserver import Prometheus
from test_operator_retraining import FakeServerMetrics

pytestmark = pytest.mark.skipif(shutil.which("prometheus") is None, reason="Debian prometheus not installed")
CHAMPION, CANDIDATE = "support-intents-aaaaaaaa", "support-intents-bbbbbbbb"


def start_with_champion(cluster: Cluster, operator: Operator, prometheus: Prometheus) -> None:
    # The canary is judged on what Prometheus has: make sure both versions were scraped first.
    cluster.wait_for(
        lambda: all(prometheus.query(f'kubetune_accuracy{{version="{v}"}}') for v in (CHAMPION, CANDIDATE)),
        timeout=60,
        message="both versions scraped",
    )
    bind_claims(cluster)
    succeeded_finetunejob(cluster, "sha256:" + "aa" * 32)
    doc = yaml.safe_load((ROOT / "examples/k8s/adapterdeployment-support-intents.yaml").read_text())
    doc["spec"]["replicas"] = 4
    doc["spec"]["rollout"] = {
        "strategy": "Canary",
        "steps": [{"weight": 25, "pauseSeconds": 2}, {"weight": 50, "pauseSeconds": 2}],
    }
    doc["spec"]["monitoring"] = {"prometheusUrl": prometheus.url, "intervalSeconds": 3600}
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))
    wait_deployment(cluster, STABLE)
    ready_pods(cluster, STABLE)
    wait_adep(cluster, operator, lambda s: active_version(s) == CHAMPION, "champion")
    succeeded_finetunejob(cluster, "sha256:" + "bb" * 32)  # a new adapter: goes out as a canary
    canary = wait_deployment(cluster, CANARY)
    assert canary["spec"]["replicas"] == 1  # 25% of 4 pods
    assert template_version(canary) == CANDIDATE
    assert template_version(cluster.get("deployments.apps", cluster.ns, STABLE)) == CHAMPION
    status = wait_adep(
        cluster, operator, lambda s: (s.get("canary") or {}).get("version") == CANDIDATE, "canary"
    )
    assert status["phase"] == "Progressing" and "canary" in status["message"]


def canary_absent_for(cluster: Cluster, seconds: float) -> bool:
    """True when no canary Deployment appears during ``seconds`` (many resync ticks of the operator)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cluster.get("deployments.apps", cluster.ns, CANARY) is not None:
            return False
        time.sleep(0.2)
    return True


def test_worse_canary_is_rolled_back(
    cluster: Cluster, operator: Operator, prometheus: Prometheus, metrics: FakeServerMetrics
) -> None:
    metrics.set(CHAMPION, drift=0.05, window=300, accuracy=0.95, feedback=100)
    metrics.set(CANDIDATE, drift=0.05, window=300, accuracy=0.55, feedback=100)
    start_with_champion(cluster, operator, prometheus)
    ready_pods(cluster, CANARY)
    rolled = wait_adep(cluster, operator, lambda s: CANDIDATE in s.get("rolledBack", []), "rolled back", 60)
    cond = next(c for c in rolled["conditions"] if c["type"] == "RolledBack")
    assert cond["status"] == "True" and "accuracy 0.550 < champion 0.950" in cond["message"]
    cluster.wait_for(
        lambda: cluster.get("deployments.apps", cluster.ns, CANARY) is None,
        timeout=TIMEOUT,
        message="canary Deployment deleted",
    )
    # The real garbage collector takes the canary's ReplicaSet and pods with it.
    cluster.wait_for(
        lambda: not cluster.list("pods", cluster.ns, label_selector="kubetune.dev/track=canary"),
        timeout=TIMEOUT,
        message="canary pods gone",
    )
    final = wait_adep(
        cluster, operator, lambda s: s.get("phase") == "Available" and not s.get("canary"), "stable"
    )
    assert final["activeAdapter"]["version"] == CHAMPION
    assert template_version(cluster.get("deployments.apps", cluster.ns, STABLE)) == CHAMPION
    cluster.wait_for(lambda: "RolledBack" in reasons(cluster), timeout=TIMEOUT, message="RolledBack event")
    # The rejected version is not retried while the job still points at it.
    assert canary_absent_for(cluster, 3), "the rolled-back canary came back"
    assert not wait_adep(cluster, operator, lambda s: s.get("phase"), "status").get("canary")
    started = [e for e in cluster.events(cluster.ns, "support-intents") if e["reason"] == "CanaryStarted"]
    assert sum(e.get("count", 1) for e in started) == 1


def test_good_canary_walks_its_steps_and_is_promoted(
    cluster: Cluster, operator: Operator, prometheus: Prometheus, metrics: FakeServerMetrics
) -> None:
    metrics.set(CHAMPION, drift=0.05, window=300, accuracy=0.90, feedback=100)
    metrics.set(CANDIDATE, drift=0.05, window=300, accuracy=0.93, feedback=100)
    start_with_champion(cluster, operator, prometheus)
    ready_pods(cluster, CANARY)
    cluster.wait_for(
        lambda: (
            (cluster.get("deployments.apps", cluster.ns, CANARY) or {}).get("spec", {}).get("replicas") == 2
        ),
        timeout=TIMEOUT,
        message="second step: 50% of pods",
    )
    ready_pods(cluster, CANARY, 2)
    wait_template_version(cluster, CANDIDATE, STABLE)  # stable track rolled to the candidate
    ready_pods(cluster, STABLE)
    live = wait_adep(
        cluster,
        operator,
        lambda s: active_version(s) == CANDIDATE and not s.get("canary") and s.get("phase") == "Available",
        "candidate is the champion",
    )
    assert live["readyReplicas"] == 4
    assert cluster.get("deployments.apps", cluster.ns, CANARY) is None
    wanted = {"CanaryStarted", "CanaryStep", "CanaryPassed", "RolledOut"}
    cluster.wait_for(lambda: wanted <= reasons(cluster), timeout=TIMEOUT, message=f"events {wanted}")
