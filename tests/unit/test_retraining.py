"""The closed loop's pure decisions: breach, budget, dedupe, the retraining job, champion/challenger."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubetune_operator.prometheus import trigger_queries
from kubetune_operator.retraining import (
    COUNTED_EVENTS,
    JUDGED,
    TRIGGERED_BY,
    Breach,
    Readings,
    build_retrain_job,
    find_breach,
    judge,
    judgement_message,
    labels_wanted,
    retrain_blocker,
    retrain_name,
)
from kubetune_trainer.entrypoint import gate_failure

from kubetune.api.adapterdeployment import AdapterDeployment, RetrainingSpec
from kubetune.api.adapterdeployment_status import ActiveAdapter, RetrainRecord
from kubetune.api.finetunejob import (
    FineTuneJob,
    FineTuneJobSpec,
    FineTuneJobStatus,
    PairedCounts,
    TrainResult,
)
from kubetune.api.monitoring import MonitoringSpec
from kubetune.api.trainconfig import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
NOW = "2026-11-22T12:00:00Z"
# Where the first run wrote its adapter (artifacts.adapter_uri: <output.uri>/adapter).
CHAMPION_URI = "pvc://kubetune-output/support-intents/adapter"


def adep(**spec: Any) -> tuple[AdapterDeployment, dict[str, Any]]:
    doc = yaml.safe_load((ROOT / "examples/k8s/adapterdeployment-support-intents.yaml").read_text())
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


def test_estimated_accuracy_breaches_without_labels_when_asked_for() -> None:
    """Issue #23: the label-free estimate (kubetune_accuracy_estimated) is a trigger of its own, off unless
    set; it needs inputs in the window, no feedback."""
    on = MonitoringSpec(
        prometheus_url="http://prom:9090", min_samples=50, estimated_accuracy={"threshold": 0.8}
    )
    low = Readings(window=200, estimated_accuracy=0.7, estimated_accuracy_sustained=0.72, feedback=0)
    breach = find_breach(on, low)
    assert breach is not None and breach.kind == "estimated_accuracy"
    assert breach.reason == "EstimatedAccuracyBreach" and "estimated accuracy 0.720 < 0.8" in breach.message
    assert find_breach(MonitoringSpec(min_samples=50), low) is None  # trigger not set
    assert find_breach(on, Readings(window=10, estimated_accuracy_sustained=0.72)) is None  # too few inputs
    assert find_breach(on, Readings(window=200, estimated_accuracy_sustained=0.85)) is None
    assert find_breach(on, Readings(window=200)) is None  # no data is no breach
    q = trigger_queries(on, "support-intents", "v-1")
    assert q.estimated_accuracy_sustained == (
        'max_over_time((avg(kubetune_accuracy_estimated{adapter="support-intents",version="v-1"}))[900s:])'
    )
    with pytest.raises(ValueError, match=r"estimatedAccuracy needs monitoring\.prometheusUrl"):
        MonitoringSpec(estimated_accuracy={"threshold": 0.8})
    with pytest.raises(ValueError, match="less than 1"):
        MonitoringSpec(prometheus_url="http://prom:9090", estimated_accuracy={"threshold": 1.0})


def test_the_gate_minimum_is_checked_against_what_the_template_scores() -> None:
    doc = yaml.safe_load((ROOT / "examples/k8s/finetunejob-support-intents.yaml").read_text())
    doc["spec"]["evaluation"]["maxSamples"] = 40
    with pytest.raises(ValueError, match=r"minRows 50 is above the template's evaluation\.maxSamples 40"):
        RetrainingSpec(template=doc["spec"])
    assert RetrainingSpec(template=doc["spec"], gate={"min_rows": 40}).gate.min_rows == 40
    with pytest.raises(ValueError, match="greater than or equal to 10"):
        RetrainingSpec(gate={"min_rows": 3})


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
        yaml.safe_load((ROOT / "examples/k8s/finetunejob-support-intents.yaml").read_text())
    ).spec
    active = ActiveAdapter(version="v1", uri=CHAMPION_URI)
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
    # Judged on the union: the recipe's own validation rows plus the fresh hold-out.
    assert spec.dataset.validation == template.dataset.validation
    assert [s.uri for s in spec.dataset.validation_extra] == [
        "pvc://kubetune-data/fresh/support-intents/holdout.jsonl"
    ]
    assert spec.dataset.train.uri == template.dataset.train.uri  # original data kept: no forgetting
    assert spec.evaluation.champion_uri == active.uri and spec.suspend is True
    assert spec.output.uri == "pvc://kubetune-output/support-intents/support-intents-retrain-1"
    assert job["metadata"]["ownerReferences"][0]["uid"] == "u-9"
    trigger = json.loads(job["metadata"]["annotations"][TRIGGERED_BY])
    assert trigger["drift"] == 0.4 and trigger["champion"] == "v1"


def done(
    both: int, challenger_only: int, champion_only: int, neither: int, champion: bool = True
) -> FineTuneJobStatus:
    """A retraining FineTuneJob that succeeded, with what its trainer reported: both scores and the
    row-by-row table behind them."""
    n = both + challenger_only + champion_only + neither
    metrics = {"after_accuracy": (both + challenger_only) / n}
    if champion:
        metrics["champion_accuracy"] = (both + champion_only) / n
    table = PairedCounts(
        metric="accuracy",
        both=both,
        challenger_only=challenger_only,
        champion_only=champion_only,
        neither=neither,
    )
    return FineTuneJobStatus(
        phase="Succeeded",
        result=TrainResult(metrics=metrics, validation_rows=n, paired=table if champion else None),
    )


GATE = RetrainingSpec()  # minRows 50, minImprovement 0


def test_the_gate_needs_its_minimum_of_rows() -> None:
    """Issue #23: a gate on 28 rows is a coin toss; below gate.minRows the retrain waits for labels,
    however clear the scores look (28/28 vs 20/28)."""
    small = judge(done(20, 8, 0, 0), "accuracy", GATE)
    assert (small.outcome, small.rows) == ("WaitingForLabels", 28)
    assert judge(done(20, 8, 0, 0), "accuracy", RetrainingSpec(gate={"min_rows": 28})).outcome == "Promoted"
    assert labels_wanted(28, 50) == 110  # 22 more held-out rows at 20% of the labels held out
    text = judgement_message("si-retrain-1", "accuracy", small, GATE)
    assert "on 28 held-out rows" in text and "fewer than retraining.gate.minRows 50" in text
    assert "label about 110 more inputs on the review queue" in text


def test_a_clear_win_is_promoted_with_n_and_the_interval() -> None:
    # 120 rows: both right on 100, the challenger alone on 8, the champion alone on 1.
    win = judge(done(100, 8, 1, 11), "accuracy", GATE)
    assert win.outcome == "Promoted" and win.rows == 120 and win.evidence is not None
    assert win.evidence.difference == pytest.approx(7 / 120)
    assert 0 < win.evidence.lower < win.evidence.difference < win.evidence.upper
    assert (win.challenger, win.champion) == (108 / 120, 101 / 120)
    text = judgement_message("x", "accuracy", win, GATE)
    assert text.startswith("x: accuracy challenger 0.900 vs champion 0.842 on 120 held-out rows: ")
    assert f"95% interval [{win.evidence.lower:+.3f}, {win.evidence.upper:+.3f}]" in text
    # ... but not when asked for 10 points more: the interval reaches below 0.10 and above it.
    assert judge(done(100, 8, 1, 11), "accuracy", RetrainingSpec(min_improvement=0.1)).outcome == (
        "Inconclusive"
    )


def test_a_clear_loss_is_rejected_and_a_tie_is_inconclusive() -> None:
    loss = judge(done(90, 0, 15, 15), "accuracy", GATE)
    assert loss.outcome == "Rejected" and loss.evidence is not None and loss.evidence.upper < 0
    # Both perfect on 120 rows: a tie of unknown size, never a loss or a win.
    tie = judge(done(120, 0, 0, 0), "accuracy", GATE)
    assert tie.outcome == "Inconclusive" and tie.evidence.lower < 0 < tie.evidence.upper
    # One row apart on 60: within chance.
    assert judge(done(50, 2, 1, 7), "accuracy", GATE).outcome == "Inconclusive"
    # A clear win by less than minImprovement is rejected: the top of the interval stays below it.
    assert judge(done(100, 8, 1, 11), "accuracy", RetrainingSpec(min_improvement=0.2)).outcome == "Rejected"


def test_paired_is_tighter_than_independent_when_the_adapters_agree() -> None:
    """The same scores (0.9 vs 0.8 on 50 rows) are a clear win when the challenger fixed 5 rows and
    broke none, and within chance when the two adapters disagree on 15 rows."""
    assert judge(done(40, 5, 0, 5), "accuracy", GATE).outcome == "Promoted"
    assert judge(done(35, 10, 5, 0), "accuracy", GATE).outcome == "Inconclusive"


def test_without_a_table_or_a_champion() -> None:
    assert judge(done(40, 5, 0, 5, champion=False), "accuracy", GATE).outcome == "Promoted"  # nothing to beat
    no_table = FineTuneJobStatus(
        phase="Succeeded",
        result=TrainResult(metrics={"after_accuracy": 0.9, "champion_accuracy": 0.8}, validation_rows=100),
    )
    judged = judge(no_table, "accuracy", GATE)
    assert judged.outcome == "Inconclusive" and judged.evidence is None
    assert "no row-by-row results" in judgement_message("x", "accuracy", judged, GATE)
    assert judge(FineTuneJobStatus(phase="Failed"), "accuracy", GATE).outcome == "Failed"
    assert judge(FineTuneJobStatus(phase="Running"), "accuracy", GATE).outcome == "Running"
    assert judge(FineTuneJobStatus(phase="Pending"), "accuracy", GATE).outcome == "Pending"


def test_a_failed_job_keeps_its_scores() -> None:
    status = FineTuneJobStatus(
        phase="Failed",
        result=TrainResult(
            metrics={"after_accuracy": 0.82, "champion_accuracy": 0.82},
            validation_rows=28,
            reason="GateFailed: accuracy 0.8214 is below evaluation.minAccuracy 0.8500",
        ),
    )
    failed = judge(status, "accuracy", GATE)
    assert (failed.outcome, failed.challenger, failed.champion, failed.rows) == ("Failed", 0.82, 0.82, 28)


def test_one_table_names_conditions_events_and_the_counter() -> None:
    assert set(JUDGED) == {"Promoted", "Rejected", "Inconclusive", "WaitingForLabels", "Failed"}
    assert COUNTED_EVENTS == {
        "Retraining": "Triggered",
        "Promoted": "Promoted",
        "NotBetter": "Rejected",
        "Inconclusive": "Inconclusive",
        "WaitingForLabels": "WaitingForLabels",
        "RetrainFailed": "Failed",
    }
    assert JUDGED["Promoted"].promoted == "True" and JUDGED["WaitingForLabels"].event_type == "Normal"


def _retrain_spec(ad: AdapterDeployment, owner: dict[str, Any]) -> FineTuneJobSpec:
    template = FineTuneJob.model_validate(
        yaml.safe_load((ROOT / "examples/k8s/finetunejob-support-intents.yaml").read_text())
    ).spec
    assert template.evaluation.min_accuracy == 0.85
    active = ActiveAdapter(version="v1", uri=CHAMPION_URI)
    job = build_retrain_job(ad, owner, template, active, Breach("manual", "m"), Readings(), "r-1", NOW)
    return FineTuneJobSpec.model_validate(job["spec"])


def test_a_retrain_on_the_fresh_holdout_is_not_held_to_the_templates_absolute_minimum() -> None:
    """Issue #26 before/after through the trainer's own gate: the template's minAccuracy 0.85 failed a
    challenger that tied a 0.82 champion on 28 fresh rows (exit 4); the retrain now carries no
    absolute minimum there, only the champion to be scored on the same rows."""
    spec = _retrain_spec(*loop())
    assert spec.evaluation.min_accuracy is None
    assert spec.evaluation.champion_uri == CHAMPION_URI
    assert spec.dataset.validation_extra[-1].uri.endswith("/holdout.jsonl")
    config = TrainConfig.from_spec("r-1", spec, {})
    template_config = config.model_copy(
        update={"evaluation": spec.evaluation.model_copy(update={"min_accuracy": 0.85})}
    )
    tie = {"accuracy": 23 / 28}
    assert gate_failure(template_config, tie) == (
        "GateFailed: accuracy 0.8214 is below evaluation.minAccuracy 0.8500"
    )
    assert gate_failure(config, tie) is None


def test_without_fresh_data_the_retrain_keeps_the_minimum_on_its_own_validation_rows() -> None:
    ad, owner = adep(monitoring={"prometheusUrl": "http://prom:9090"}, retraining={"enabled": True})
    spec = _retrain_spec(ad, owner)
    assert spec.evaluation.min_accuracy == 0.85
    assert spec.dataset.validation.uri == "pvc://kubetune-data/support-intents/validation.jsonl"
    assert spec.dataset.validation_extra == []


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
    doc = yaml.safe_load((ROOT / "examples/k8s/finetunejob-support-intents.yaml").read_text())
    doc["spec"]["training"]["recipe"] = "auto"
    template = FineTuneJob.model_validate(doc).spec
    active = ActiveAdapter(version="v1", uri=CHAMPION_URI)
    job = build_retrain_job(
        ad, owner, template, active, Breach("manual", "m"), Readings(), "x-retrain-1", NOW
    )
    assert job["spec"]["training"]["recipe"] == "auto"
    assert FineTuneJobSpec.model_validate(job["spec"]).training.recipe == "auto"
