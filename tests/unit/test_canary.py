"""Canary decisions: sizes, step timing, and when a canary is worse than the champion."""

from __future__ import annotations

from pathlib import Path

import yaml
from kubetune_operator.canary import VersionHealth, canary_replicas, compare, health_queries, step_decision

from kubetune.api.adapterdeployment import AdapterDeployment
from kubetune.api.adapterdeployment_status import CanaryStatus

ROOT = Path(__file__).resolve().parents[2]


def canary_adep() -> AdapterDeployment:
    doc = yaml.safe_load((ROOT / "examples/k8s/adapterdeployment-support-intents.yaml").read_text())
    doc["spec"]["rollout"] = {
        "strategy": "Canary",
        "steps": [{"weight": 25, "pauseSeconds": 60}, {"weight": 50, "pauseSeconds": 120}],
    }
    return AdapterDeployment.model_validate(doc)


def test_canary_size_is_a_share_of_the_pods_but_at_least_one() -> None:
    assert canary_replicas(4, 25) == 1 and canary_replicas(4, 50) == 2 and canary_replicas(1, 10) == 1
    assert canary_replicas(10, 33) == 4


def test_step_waits_for_ready_pods_and_the_pause() -> None:
    ad = canary_adep()
    c = CanaryStatus(version="v2", uri="pvc://o/v2", step=0, weight=25)
    assert (
        step_decision(ad, c, ready=False, created_at="2026-01-01T00:00:00Z", now="2026-01-01T00:05:00Z")
        == "wait"
    )
    assert step_decision(ad, c, False, "2026-01-01T00:00:00Z", "2026-01-01T00:12:00Z") == "rollback-unready"
    started = c.model_copy(update={"step_started_at": "2026-01-01T00:00:00Z"})
    assert step_decision(ad, started, True, "2026-01-01T00:00:00Z", "2026-01-01T00:00:30Z") == "wait"
    assert step_decision(ad, started, True, "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z") == "judge"


def test_compare_condemns_only_a_clearly_worse_canary() -> None:
    champ = VersionHealth(error_ratio=0.01, accuracy=0.93, drift=0.05)
    assert compare(champ, VersionHealth(error_ratio=0.01, accuracy=0.92, drift=0.06), 0.2) is None
    assert "error ratio" in compare(champ, VersionHealth(error_ratio=0.2), 0.2)
    assert "accuracy 0.600 < champion 0.930" in compare(champ, VersionHealth(accuracy=0.6), 0.2)
    assert "drift" in compare(champ, VersionHealth(drift=0.5), 0.2)
    assert compare(champ, VersionHealth(), 0.2) is None  # no data never condemns
    assert (
        compare(VersionHealth(drift=0.5), VersionHealth(drift=0.5), 0.2) is None
    )  # both drifted: input, not model


def test_health_queries_are_per_version() -> None:
    q = health_queries("intents", "v2", 30, "embedding_cosine")
    assert 'version="v2"' in q["error_ratio"] and "[60s]" in q["error_ratio"]
    assert q["accuracy"] == 'avg(kubetune_accuracy{adapter="intents",version="v2"})'


def test_a_canary_without_evidence_waits_only_until_the_grace_is_over() -> None:
    from kubetune_operator.canary import evidence_overdue

    ad = canary_adep()
    started = CanaryStatus(
        version="v2", uri="pvc://o/v2", step=0, weight=25, step_started_at="2026-01-01T00:00:00Z"
    )
    assert not evidence_overdue(ad, started, "2026-01-01T00:05:00Z")
    assert evidence_overdue(ad, started, "2026-01-01T00:12:00Z")
