"""The closed loop's pure decisions: breach, budget, dedupe, the retraining job, champion/challenger."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from kubetune_operator.prometheus import trigger_queries
from kubetune_operator.retraining import (
    TRIGGERED_BY,
    Breach,
    Readings,
    build_retrain_job,
    find_breach,
    judge,
    retrain_blocker,
    retrain_name,
)

from kubetune.api.adapterdeployment import ActiveAdapter, AdapterDeployment, MonitoringSpec, RetrainRecord
from kubetune.api.finetunejob import FineTuneJob, FineTuneJobSpec, FineTuneJobStatus, TrainResult

ROOT = Path(__file__).resolve().parents[2]
NOW = "2026-11-22T12:00:00Z"


def adep(**spec: Any) -> tuple[AdapterDeployment, dict[str, Any]]:
    doc = yaml.safe_load((ROOT / "examples/adapterdeployment-support-intents.yaml").read_text())
    doc["metadata"].update(namespace="ml", uid="u-9", generation=2)
    doc["spec"].update(spec)
    return AdapterDeployment.model_validate(doc), doc


def loop(**retraining: Any) -> tuple[AdapterDeployment, dict[str, Any]]:
    return adep(
        monitoring={
            "prometheusUrl": "http://prom:9090",
            "minSamples": 50,
            "freshData": {"uri": "pvc://kubetune-data/fresh"},
        },
        retraining={"enabled": True, **retraining},
    )


def test_sustained_drift_with_enough_samples_is_a_breach() -> None:
    m = MonitoringSpec(min_samples=50)
    assert find_breach(m, Readings(drift_sustained=0.35, window=200)).kind == "drift"
    assert find_breach(m, Readings(drift_sustained=0.35, window=10)) is None  # too few inputs
    assert find_breach(m, Readings(drift_sustained=0.15, window=200)) is None
    assert find_breach(m, Readings(drift_sustained=None, window=None)) is None  # no data is no breach
    acc = find_breach(m, Readings(drift_sustained=0.1, window=200, accuracy_sustained=0.6, feedback=80))
    assert acc is not None and acc.kind == "accuracy" and "0.600 < 0.85" in acc.message
    assert find_breach(m, Readings(accuracy_sustained=0.6, feedback=20)) is None


def test_promql_selects_the_active_version_and_holds_for_the_window() -> None:
    q = trigger_queries(MonitoringSpec(), "support-intents", "v-1")
    assert q.drift_sustained == (
        'min_over_time((avg(kubetune_drift_score{adapter="support-intents",'
        'version="v-1",kind="embedding_cosine"}))[600s:])'
    )
    assert q.accuracy_sustained.startswith("max_over_time((avg(kubetune_accuracy{")
    assert (
        trigger_queries(MonitoringSpec(drift={"for_seconds": 0}), "a", 'x"y').drift_sustained.count('x\\"y')
        == 1
    )


def test_budget_cooldown_and_in_flight() -> None:
    ad, _ = loop(cooldownSeconds=3600, maxPerDay=2)
    r = ad.spec.retraining
    assert retrain_blocker(r, [], NOW) is None
    running = [
        RetrainRecord(fine_tune_job="a", created_at="2026-11-22T11:59:00Z", trigger="t", outcome="Running")
    ]
    assert "already running" in retrain_blocker(r, running, NOW)
    recent = [
        RetrainRecord(fine_tune_job="a", created_at="2026-11-22T11:30:00Z", trigger="t", outcome="Rejected")
    ]
    assert "cooldown" in retrain_blocker(r, recent, NOW)
    spent = [
        RetrainRecord(fine_tune_job=n, created_at=t, trigger="t", outcome="Rejected")
        for n, t in (("a", "2026-11-22T01:00:00Z"), ("b", "2026-11-22T09:00:00Z"))
    ]
    assert "daily budget" in retrain_blocker(r, spent, NOW)
    off, _ = adep()
    assert "enabled is false" in retrain_blocker(off.spec.retraining, [], NOW)


def test_retrain_name_is_deterministic_per_version_and_attempt() -> None:
    first = retrain_name("support-intents", "v1", [])
    assert first == retrain_name("support-intents", "v1", []) and len(first) <= 63
    second = retrain_name(
        "support-intents", "v1", [RetrainRecord(fine_tune_job=first, created_at=NOW, trigger="t")]
    )
    assert second != first and second.endswith("2")
    assert retrain_name("support-intents", "v2", []) != first


def test_retrain_job_adds_fresh_data_champion_and_owner() -> None:
    ad, owner = loop(approval="manual", freshDataWeight=3)
    template = FineTuneJob.model_validate(
        yaml.safe_load((ROOT / "examples/finetunejob-support-intents.yaml").read_text())
    ).spec
    active = ActiveAdapter(version="v1", uri="pvc://kubetune-output/support-intents")
    job = build_retrain_job(
        ad,
        owner,
        template,
        active,
        Breach("drift", "drift 0.4 > 0.2"),
        Readings(drift=0.4, accuracy=0.7),
        "support-intents-retrain-1",
        NOW,
    )
    spec = FineTuneJobSpec.model_validate(job["spec"])
    assert [(e.uri, e.weight) for e in spec.dataset.extra] == [
        ("pvc://kubetune-data/fresh/support-intents/train.jsonl", 3)
    ]
    assert spec.dataset.validation.uri == "pvc://kubetune-data/fresh/support-intents/holdout.jsonl"
    assert spec.dataset.train.uri == template.dataset.train.uri  # original data kept: no forgetting
    assert spec.evaluation.champion_uri == active.uri and spec.suspend is True
    assert spec.output.uri == "pvc://kubetune-output/support-intents/support-intents-retrain-1"
    assert job["metadata"]["ownerReferences"][0]["uid"] == "u-9"
    trigger = json.loads(job["metadata"]["annotations"][TRIGGERED_BY])
    assert trigger["drift"] == 0.4 and trigger["champion"] == "v1"


def test_champion_challenger() -> None:
    def done(after: float, champion: float | None) -> FineTuneJobStatus:
        metrics = {"after_accuracy": after} | (
            {"champion_accuracy": champion} if champion is not None else {}
        )
        return FineTuneJobStatus(phase="Succeeded", result=TrainResult(metrics=metrics))

    assert judge(done(0.90, 0.80), "accuracy", 0.02)[0] == "Promoted"
    assert judge(done(0.81, 0.80), "accuracy", 0.02)[0] == "Rejected"
    assert judge(FineTuneJobStatus(phase="Failed"), "accuracy", 0.0)[0] == "Failed"
    assert judge(FineTuneJobStatus(phase="Running"), "accuracy", 0.0)[0] == "Running"


def test_retrain_names_of_a_long_adapterdeployment_fit_the_finetunejob_name_rule() -> None:
    from kubetune_operator.retraining import retrain_name

    from kubetune.api.common import check_resource_name

    for adapter in ("support-intents", "a" * 47, "b" * 63):
        name = retrain_name(adapter, "v1", [])
        check_resource_name(name)
        assert len(name) <= 63
    assert retrain_name("support-intents", "v1", []).startswith("support-intents-retrain-")


def test_retrain_job_keeps_the_recipe_of_the_template() -> None:
    """training.recipe travels into the retraining FineTuneJob: with auto, the retrain again trains
    probe, LoRA and full on original + fresh data and keeps the best before the champion gate."""
    ad, owner = loop()
    doc = yaml.safe_load((ROOT / "examples/finetunejob-support-intents.yaml").read_text())
    doc["spec"]["training"]["recipe"] = "auto"
    template = FineTuneJob.model_validate(doc).spec
    active = ActiveAdapter(version="v1", uri="pvc://kubetune-output/support-intents")
    job = build_retrain_job(
        ad, owner, template, active, Breach("manual", "m"), Readings(), "x-retrain-1", NOW
    )
    assert job["spec"]["training"]["recipe"] == "auto"
    assert FineTuneJobSpec.model_validate(job["spec"]).training.recipe == "auto"
