"""Canary rollouts through the real operator with a real Prometheus: a worse canary is rolled back
and never retried; a good one walks its steps and replaces the champion."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from emulator import EmulatedCluster
from promserver import Prometheus
from test_operator_adapterdeployment import succeeded_finetunejob, wait_adep
from test_operator_finetunejob import NS, TIMEOUT, Operator
from test_operator_retraining import FakeServerMetrics

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("prometheus") is None, reason="Debian prometheus not installed")
CHAMPION, CANDIDATE = "support-intents-aaaaaaaa", "support-intents-bbbbbbbb"


def ready(cluster: EmulatedCluster, name: str) -> dict[str, Any]:
    dep = cluster.get("deployments.apps", NS, name)
    assert dep is not None
    n = dep["spec"]["replicas"]
    return cluster.patch_status(
        "deployments.apps",
        NS,
        name,
        {
            "observedGeneration": dep["metadata"]["generation"],
            "replicas": n,
            "updatedReplicas": n,
            "readyReplicas": n,
            "availableReplicas": n,
        },
    )


def start_with_champion(cluster: EmulatedCluster, operator: Operator, prometheus: Prometheus) -> None:
    # The canary is judged on what Prometheus has: make sure both versions were scraped first.
    cluster.wait_for(
        lambda: all(prometheus.query(f'kubetune_accuracy{{version="{v}"}}') for v in (CHAMPION, CANDIDATE)),
        timeout=60,
        message="both versions scraped",
    )
    succeeded_finetunejob(cluster, "sha256:" + "aa" * 32)
    doc = yaml.safe_load((ROOT / "examples/adapterdeployment-support-intents.yaml").read_text())
    doc["spec"]["replicas"] = 4
    doc["spec"]["rollout"] = {
        "strategy": "Canary",
        "steps": [{"weight": 25, "pauseSeconds": 2}, {"weight": 50, "pauseSeconds": 2}],
    }
    doc["spec"]["monitoring"] = {"prometheusUrl": prometheus.url, "intervalSeconds": 3600}
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))
    cluster.wait_for(
        lambda: cluster.get("deployments.apps", NS, "support-intents-server"),
        timeout=TIMEOUT,
        message="stable Deployment",
    )
    ready(cluster, "support-intents-server")
    wait_adep(
        cluster, operator, lambda s: (s.get("activeAdapter") or {}).get("version") == CHAMPION, "champion"
    )
    succeeded_finetunejob(cluster, "sha256:" + "bb" * 32)  # a new adapter: goes out as a canary
    canary = cluster.wait_for(
        lambda: cluster.get("deployments.apps", NS, "support-intents-canary"),
        timeout=TIMEOUT,
        message="canary Deployment",
    )
    assert canary["spec"]["replicas"] == 1  # 25% of 4 pods
    assert canary["spec"]["template"]["metadata"]["annotations"]["kubetune.dev/adapter-version"] == CANDIDATE
    stable = cluster.get("deployments.apps", NS, "support-intents-server")
    assert stable["spec"]["template"]["metadata"]["annotations"]["kubetune.dev/adapter-version"] == CHAMPION
    status = wait_adep(
        cluster, operator, lambda s: (s.get("canary") or {}).get("version") == CANDIDATE, "canary"
    )
    assert status["phase"] == "Progressing" and "canary" in status["message"]


def test_worse_canary_is_rolled_back(
    cluster: EmulatedCluster, operator: Operator, prometheus: Prometheus, metrics: FakeServerMetrics
) -> None:
    metrics.set(CHAMPION, drift=0.05, window=300, accuracy=0.95, feedback=100)
    metrics.set(CANDIDATE, drift=0.05, window=300, accuracy=0.55, feedback=100)
    start_with_champion(cluster, operator, prometheus)
    ready(cluster, "support-intents-canary")
    rolled = wait_adep(cluster, operator, lambda s: CANDIDATE in s.get("rolledBack", []), "rolled back", 60)
    cond = next(c for c in rolled["conditions"] if c["type"] == "RolledBack")
    assert cond["status"] == "True" and "accuracy 0.550 < champion 0.950" in cond["message"]
    cluster.wait_for(
        lambda: cluster.get("deployments.apps", NS, "support-intents-canary") is None,
        timeout=TIMEOUT,
        message="canary Deployment deleted",
    )
    final = wait_adep(
        cluster, operator, lambda s: s.get("phase") == "Available" and not s.get("canary"), "stable"
    )
    assert final["activeAdapter"]["version"] == CHAMPION
    cluster.wait_for(
        lambda: any(e["reason"] == "RolledBack" for e in cluster.events(NS, "support-intents")),
        timeout=TIMEOUT,
        message="RolledBack event",
    )
    # The rejected version is not retried while the job still points at it.
    later = wait_adep(
        cluster, operator, lambda s: s.get("lastEvaluated") or s.get("observedGeneration"), "tick"
    )
    assert cluster.get("deployments.apps", NS, "support-intents-canary") is None and not later.get("canary")


def test_good_canary_walks_its_steps_and_is_promoted(
    cluster: EmulatedCluster, operator: Operator, prometheus: Prometheus, metrics: FakeServerMetrics
) -> None:
    metrics.set(CHAMPION, drift=0.05, window=300, accuracy=0.90, feedback=100)
    metrics.set(CANDIDATE, drift=0.05, window=300, accuracy=0.93, feedback=100)
    start_with_champion(cluster, operator, prometheus)
    ready(cluster, "support-intents-canary")
    cluster.wait_for(
        lambda: cluster.get("deployments.apps", NS, "support-intents-canary")["spec"]["replicas"] == 2,
        timeout=TIMEOUT,
        message="second step: 50% of pods",
    )
    ready(cluster, "support-intents-canary")
    cluster.wait_for(
        lambda: (
            cluster.get("deployments.apps", NS, "support-intents-server")["spec"]["template"]["metadata"][
                "annotations"
            ]["kubetune.dev/adapter-version"]
            == CANDIDATE
        ),
        timeout=TIMEOUT,
        message="stable track rolled to the candidate",
    )
    ready(cluster, "support-intents-server")
    live = wait_adep(
        cluster,
        operator,
        lambda s: (s.get("activeAdapter") or {}).get("version") == CANDIDATE and not s.get("canary"),
        "candidate is the champion",
    )
    assert live["phase"] == "Available" and not live.get("canary")
    assert cluster.get("deployments.apps", NS, "support-intents-canary") is None
    wanted = {"CanaryStarted", "CanaryStep", "CanaryPassed", "RolledOut"}
    cluster.wait_for(
        lambda: wanted <= {e["reason"] for e in cluster.events(NS, "support-intents")},
        timeout=TIMEOUT,
        message=f"events {wanted}",
    )
