"""The alert rules the chart ships: `promtool check rules`, `promtool test rules` with one series that
fires and at least one that does not for every alert, and the metric names the rules and the
dashboard use against the telemetry contract and what the server and operator really export.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubetune_operator import metrics as operator_metrics
from kubetune_trainer.serve.metrics import ServeMetrics
from prometheus_client import CollectorRegistry

from kubetune.api import telemetry

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "charts/kubetune/files/rules/kubetune-alerts.yaml"
DASHBOARD = ROOT / "charts/kubetune/files/dashboards/kubetune.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian prometheus) not installed")

SRV = 'namespace="ml", pod="support-intents-7d9f-abcde", adapter="support-intents", version="v1"'
SRV_LABELS = {"namespace": "ml", "adapter": "support-intents", "version": "v1"}
JOB = 'namespace="ml", name="support-intents-retrain-1"'
JOB_LABELS = {"namespace": "ml", "name": "support-intents-retrain-1"}
RETRAIN = 'namespace="ml", adapterdeployment="support-intents"'
OPERATOR = 'job="kubetune-operator", namespace="kubetune-system"'
HPA = 'namespace="ml", horizontalpodautoscaler="support-intents"'
HPA_INFO = f'{HPA}, scaletargetref_kind="AdapterDeployment", scaletargetref_name="support-intents"'


def series(name: str, labels: str, values: str) -> dict[str, str]:
    return {"series": f"{name}{{{labels}}}", "values": values}


def latency(le_counts: dict[str, str]) -> list[dict[str, str]]:
    """Cumulative histogram buckets of kubetune_request_duration_seconds, ``le`` -> values."""
    return [
        series("kubetune_request_duration_seconds_bucket", f'{SRV}, le="{le}"', v)
        for le, v in le_counts.items()
    ]


def alert(labels: dict[str, str], summary: str, description: str) -> dict[str, Any]:
    return {"exp_labels": labels, "exp_annotations": {"summary": summary, "description": description}}


# alert -> (input series that fire it, eval time, the expected alert), and series that must not.
FIRING: dict[str, tuple[list[dict[str, str]], str, dict[str, Any]]] = {
    "KubetuneAutoscalerAtMax": (
        [
            series("kube_horizontalpodautoscaler_status_current_replicas", HPA, "4 8x30"),
            series("kube_horizontalpodautoscaler_spec_max_replicas", HPA, "8x31"),
            series("kube_horizontalpodautoscaler_info", HPA_INFO, "1x31"),
        ],
        "20m",
        alert(
            {
                "severity": "warning",
                "namespace": "ml",
                "horizontalpodautoscaler": "support-intents",
                "scaletargetref_name": "support-intents",
            },
            "support-intents: autoscaler at maxReplicas (8 pods) for 15m",
            "The autoscaler ml/support-intents of AdapterDeployment support-intents has been at "
            "spec.autoscaling.maxReplicas for 15m: requests queue above the target per pod. Raise "
            "maxReplicas (and the GPU quota it needs) or shed load.",
        ),
    ),
    "KubetuneDriftHigh": (
        [
            series("kubetune_drift_score", f'{SRV}, kind="embedding_cosine"', "0.35x30"),
            series("kubetune_drift_score", f'{SRV}, kind="length_psi"', "0.05x30"),
            series("kubetune_drift_window_size", SRV, "500x30"),
        ],
        "15m",
        alert(
            {"severity": "warning", "kind": "embedding_cosine", **SRV_LABELS},
            "support-intents v1: embedding_cosine drift above 0.2 for 10m",
            "Live inputs of adapter support-intents version v1 in ml drifted from the training data "
            "(embedding_cosine = 0.350). With spec.retraining.enabled the operator starts a retraining "
            "FineTuneJob; see the AdapterDeployment's Drifted and Retraining conditions.",
        ),
    ),
    "KubetuneAccuracyLow": (
        [
            series("kubetune_accuracy", SRV, "0.71x30"),
            series("kubetune_feedback_total", SRV, "140+7x30"),
            series("kubetune_feedback_correct_total", SRV, "100+5x30"),
        ],
        "20m",
        alert(
            {"severity": "warning", **SRV_LABELS},
            "support-intents v1: rolling accuracy below 0.85 for 15m",
            "Feedback on adapter support-intents version v1 in ml says 71% of recent answers were right.",
        ),
    ),
    "KubetuneAccuracyEstimatedLow": (
        [
            series("kubetune_accuracy_estimated", SRV, "0.62x30"),
            series("kubetune_drift_window_size", SRV, "500x30"),
        ],
        "20m",
        alert(
            {"severity": "warning", **SRV_LABELS},
            "support-intents v1: estimated accuracy below 0.85 for 15m",
            "Without any label, the calibrated confidence of recent inputs of adapter support-intents "
            "version v1 in ml estimates that 62% of its answers are right. Label the review queue "
            "(/admin/review) to confirm it before feedback arrives.",
        ),
    ),
    "KubetuneRetrainFailed": (
        [series("kubetune_retrains_total", f'{RETRAIN}, outcome="Failed"', "0 0 0 1x10")],
        "5m",
        alert(
            {"severity": "warning", "namespace": "ml", "adapterdeployment": "support-intents"},
            "support-intents: a retraining FineTuneJob failed",
            "A retrain of AdapterDeployment ml/support-intents failed in the last hour; the champion keeps "
            "serving. `kubectl describe adapterdeployment` shows the FineTuneJob and its failure reason.",
        ),
    ),
    "KubetuneRetrainRejected": (
        [series("kubetune_retrains_total", f'{RETRAIN}, outcome="Rejected"', "0 0 0 1x10")],
        "5m",
        alert(
            {"severity": "info", "namespace": "ml", "adapterdeployment": "support-intents"},
            "support-intents: retrained adapter was not better than the champion",
            "The challenger of ml/support-intents did not beat the serving adapter by minImprovement and "
            "was not promoted. If drift persists, the fresh data may need labels or the drift is not "
            "fixable by retraining.",
        ),
    ),
    "KubetuneServingErrorRatioHigh": (
        [
            series("kubetune_requests_total", SRV, "0+100x30"),
            series("kubetune_errors_total", SRV, "0+10x30"),
        ],
        "15m",
        alert(
            {"severity": "critical", **SRV_LABELS},
            "support-intents v1: 10% of requests fail",
            "More than 5% of requests to ml/support-intents answered with an error for 5m.",
        ),
    ),
    "KubetuneServingLatencyP99High": (
        latency({"0.1": "0x30", "2.5": "0x30", "5": "0+60x30", "+Inf": "0+60x30"}),
        "20m",
        alert(
            {"severity": "warning", **SRV_LABELS},
            "support-intents v1: p99 latency 4.975s",
            "The 99th percentile request latency of ml/support-intents stayed above 2.5s for 10m (tune "
            "this for generative adapters on CPU).",
        ),
    ),
    "KubetuneOperatorReconcileErrors": (
        [
            series("kubetune_operator_reconciles_total", f'{OPERATOR}, result="ok"', "0+10x40"),
            series("kubetune_operator_reconciles_total", f'{OPERATOR}, result="error"', "0+5x40"),
        ],
        "30m",
        alert(
            {"severity": "warning", "namespace": "kubetune-system", "job": "kubetune-operator"},
            "kubetune operator: 33.33% of reconciles fail",
            "More than 10% of FineTuneJob reconcile passes raised for 15m; see the operator's logs.",
        ),
    ),
    "KubetuneFineTuneJobFailed": (
        [
            series("kubetune_finetunejob_phase", f'{JOB}, phase="Running"', "1 1 0x10"),
            series("kubetune_finetunejob_phase", f'{JOB}, phase="Failed"', "0 0 1x10"),
        ],
        "5m",
        alert(
            {"severity": "warning", **JOB_LABELS},
            "FineTuneJob ml/support-intents-retrain-1 failed",
            "`kubectl describe finetunejob -n ml support-intents-retrain-1` shows the Failed condition's "
            "reason. Resolves when the job is deleted or recreated.",
        ),
    ),
    "KubetuneFineTuneJobStuck": (
        [
            series("kubetune_finetunejob_phase", f'{JOB}, phase="Running"', "1x60"),
            series("kubetune_finetunejob_progress_ratio", JOB, "0+0.02x10 0.2x50"),
        ],
        "45m",
        alert(
            {"severity": "warning", **JOB_LABELS},
            "FineTuneJob ml/support-intents-retrain-1 is Running without progress",
            "No new training step for 15m (from the start of Running, or 30m after the last step): a "
            "hung model download or data load, a stuck collective, a throttled pod. Check the training "
            "pod's logs.",
        ),
    ),
}

QUIET: dict[str, list[tuple[str, list[dict[str, str]], str]]] = {
    "KubetuneAutoscalerAtMax": [
        (
            "below max",
            [
                series("kube_horizontalpodautoscaler_status_current_replicas", HPA, "7x30"),
                series("kube_horizontalpodautoscaler_spec_max_replicas", HPA, "8x30"),
                series("kube_horizontalpodautoscaler_info", HPA_INFO, "1x30"),
            ],
            "20m",
        ),
        (
            "an HPA of something else",
            [
                series("kube_horizontalpodautoscaler_status_current_replicas", HPA, "8x30"),
                series("kube_horizontalpodautoscaler_spec_max_replicas", HPA, "8x30"),
                series(
                    "kube_horizontalpodautoscaler_info",
                    f'{HPA}, scaletargetref_kind="Deployment", scaletargetref_name="web"',
                    "1x30",
                ),
            ],
            "20m",
        ),
        (
            "at max for less than 15m",
            [
                series("kube_horizontalpodautoscaler_status_current_replicas", HPA, "4x20 8x10"),
                series("kube_horizontalpodautoscaler_spec_max_replicas", HPA, "8x30"),
                series("kube_horizontalpodautoscaler_info", HPA_INFO, "1x30"),
            ],
            "25m",
        ),
    ],
    "KubetuneDriftHigh": [
        (
            "below threshold",
            [
                series("kubetune_drift_score", f'{SRV}, kind="embedding_cosine"', "0.15x30"),
                series("kubetune_drift_window_size", SRV, "500x30"),
            ],
            "15m",
        ),
        (
            "too few inputs in the window",
            [
                series("kubetune_drift_score", f'{SRV}, kind="embedding_cosine"', "0.35x30"),
                series("kubetune_drift_window_size", SRV, "60x30"),
            ],
            "15m",
        ),
        (
            "not sustained for 10m",
            [
                series("kubetune_drift_score", f'{SRV}, kind="embedding_cosine"', "0.1x10 0.35x5"),
                series("kubetune_drift_window_size", SRV, "500x30"),
            ],
            "15m",
        ),
    ],
    "KubetuneAccuracyLow": [
        (
            "accurate",
            [
                series("kubetune_accuracy", SRV, "0.93x30"),
                series("kubetune_feedback_total", SRV, "100+5x30"),
            ],
            "20m",
        ),
        (
            "too little feedback",
            [
                series("kubetune_accuracy", SRV, "0.5x30"),
                series("kubetune_feedback_total", SRV, "40x30"),
            ],
            "20m",
        ),
    ],
    "KubetuneAccuracyEstimatedLow": [
        (
            "confident",
            [
                series("kubetune_accuracy_estimated", SRV, "0.93x30"),
                series("kubetune_drift_window_size", SRV, "500x30"),
            ],
            "20m",
        ),
        (
            "too few inputs",
            [
                series("kubetune_accuracy_estimated", SRV, "0.4x30"),
                series("kubetune_drift_window_size", SRV, "30x30"),
            ],
            "20m",
        ),
        (
            "low only briefly",
            [
                series("kubetune_accuracy_estimated", SRV, "0.6x5 0.95x25"),
                series("kubetune_drift_window_size", SRV, "500x30"),
            ],
            "20m",
        ),
    ],
    "KubetuneRetrainFailed": [
        (
            "triggered and promoted",
            [
                series("kubetune_retrains_total", f'{RETRAIN}, outcome="Triggered"', "0 1x10"),
                series("kubetune_retrains_total", f'{RETRAIN}, outcome="Promoted"', "0 0 0 1x10"),
                series("kubetune_retrains_total", f'{RETRAIN}, outcome="Failed"', "0x10"),
            ],
            "5m",
        ),
        (
            "failed over an hour ago",
            [
                series("kubetune_retrains_total", f'{RETRAIN}, outcome="Failed"', "0 1x100"),
            ],
            "90m",
        ),
    ],
    "KubetuneRetrainRejected": [
        (
            "promoted",
            [
                series("kubetune_retrains_total", f'{RETRAIN}, outcome="Promoted"', "0 0 0 1x10"),
                series("kubetune_retrains_total", f'{RETRAIN}, outcome="Rejected"', "0x10"),
            ],
            "5m",
        ),
    ],
    "KubetuneServingErrorRatioHigh": [
        (
            "1% errors",
            [
                series("kubetune_requests_total", SRV, "0+100x30"),
                series("kubetune_errors_total", SRV, "0+1x30"),
            ],
            "15m",
        ),
        (
            "no traffic",
            [
                series("kubetune_requests_total", SRV, "0x30"),
                series("kubetune_errors_total", SRV, "0x30"),
            ],
            "15m",
        ),
    ],
    "KubetuneServingLatencyP99High": [
        ("fast", latency({"0.1": "0+60x30", "2.5": "0+60x30", "5": "0+60x30", "+Inf": "0+60x30"}), "20m"),
        (
            "slow for only 5m",
            latency(
                {
                    "0.1": "0+60x10 600x20",
                    "2.5": "0+60x10 600x20",
                    "5": "0+60x15 900x15",
                    "+Inf": "0+60x15 900x15",
                }
            ),
            "20m",
        ),
    ],
    "KubetuneOperatorReconcileErrors": [
        (
            "1% errors",
            [
                series("kubetune_operator_reconciles_total", f'{OPERATOR}, result="ok"', "0+100x40"),
                series("kubetune_operator_reconciles_total", f'{OPERATOR}, result="error"', "0+1x40"),
            ],
            "30m",
        ),
    ],
    "KubetuneFineTuneJobFailed": [
        (
            "succeeded",
            [
                series("kubetune_finetunejob_phase", f'{JOB}, phase="Failed"', "0x10"),
                series("kubetune_finetunejob_phase", f'{JOB}, phase="Succeeded"', "0 0 1x10"),
            ],
            "5m",
        ),
    ],
    "KubetuneFineTuneJobStuck": [
        (
            "progressing",
            [
                series("kubetune_finetunejob_phase", f'{JOB}, phase="Running"', "1x60"),
                series("kubetune_finetunejob_progress_ratio", JOB, "0+0.01x60"),
            ],
            "45m",
        ),
        (
            "succeeded at its last step",
            [
                series("kubetune_finetunejob_phase", f'{JOB}, phase="Running"', "1x10 0x50"),
                series("kubetune_finetunejob_progress_ratio", JOB, "0+0.1x10 1x50"),
            ],
            "45m",
        ),
    ],
}


def rule_alerts() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [r["alert"] for g in groups for r in g["rules"] if "alert" in r]


def promtool_tests() -> dict[str, Any]:
    """A `promtool test rules` file: one test group per case (each has its own input series)."""
    tests: list[dict[str, Any]] = []
    for name, (input_series, at, expected) in FIRING.items():
        tests.append(
            {
                "name": f"{name} fires",
                "interval": "1m",
                "input_series": input_series,
                "alert_rule_test": [{"eval_time": at, "alertname": name, "exp_alerts": [expected]}],
            }
        )
    for name, cases in QUIET.items():
        for why, input_series, at in cases:
            tests.append(
                {
                    "name": f"{name} quiet: {why}",
                    "interval": "1m",
                    "input_series": input_series,
                    "alert_rule_test": [{"eval_time": at, "alertname": name, "exp_alerts": []}],
                }
            )
    return {"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": tests}


@needs_promtool
def test_promtool_check_rules() -> None:
    result = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rule_alerts())} rules found" in result.stdout


@needs_promtool
def test_promtool_test_rules(tmp_path: Path) -> None:
    test_file = tmp_path / "kubetune-alerts.test.yaml"
    test_file.write_text(yaml.safe_dump(promtool_tests(), sort_keys=False))
    result = subprocess.run([PROMTOOL, "test", "rules", str(test_file)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_promtool_test_rules_notices_a_wrong_expectation(tmp_path: Path) -> None:
    """Control: a quiet case that expects an alert must make promtool fail."""
    spec = promtool_tests()
    quiet = next(t for t in spec["tests"] if "quiet" in t["name"])
    quiet["alert_rule_test"][0]["exp_alerts"] = [{"exp_labels": {"severity": "warning"}}]
    test_file = tmp_path / "wrong.test.yaml"
    test_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    result = subprocess.run([PROMTOOL, "test", "rules", str(test_file)], capture_output=True, text=True)
    assert result.returncode != 0


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    alerts = rule_alerts()
    assert sorted(alerts) == sorted(FIRING), "FIRING must cover exactly the alerts in the rule file"
    assert sorted(alerts) == sorted(QUIET), "QUIET must cover exactly the alerts in the rule file"
    assert all(QUIET[a] for a in alerts)


def test_every_alert_has_severity_summary_and_description() -> None:
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("info", "warning", "critical"), rule["alert"]
            assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]


# --- metric names ---------------------------------------------------------------------------------

SERIES_SUFFIXES = ("_bucket", "_count", "_sum")


def used_metric_names() -> set[str]:
    """Every kubetune_* series name in the rule expressions and the dashboard's queries."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    exprs = [r["expr"] for g in groups for r in g["rules"]] + dashboard_queries()
    # kubetune_dev_* are label names (Kubernetes pod labels kubetune.dev/... copied by the PodMonitor)
    return {n for e in exprs for n in re.findall(r"\bkubetune_(?!dev_)[a-z0-9_]+", e)}


def dashboard_queries() -> list[str]:
    """Panel targets, annotation and variable queries of the dashboard."""
    model = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in model["panels"] for t in p.get("targets", [])]
    queries += [a["expr"] for a in model["annotations"]["list"] if "expr" in a]
    queries += [v["definition"] for v in model["templating"]["list"] if v["type"] == "query"]
    return queries


def exported_series(registry: CollectorRegistry) -> set[str]:
    """Series names a registry exposes (counters with _total, histograms with _bucket/_count/_sum)."""
    names: set[str] = set()
    for family in registry.collect():
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + s for s in SERIES_SUFFIXES)
        else:
            names.add(family.name)
    return names


def contract_series() -> set[str]:
    """The series kubetune.api.telemetry names (histograms with their _bucket/_count/_sum)."""
    names = {
        telemetry.DRIFT_SCORE,
        telemetry.DRIFT_WINDOW,
        telemetry.ACCURACY,
        telemetry.ACCURACY_ESTIMATED,
        telemetry.REVIEW_RATE,
        telemetry.FEEDBACK_TOTAL,
        telemetry.FEEDBACK_CORRECT_TOTAL,
        telemetry.REQUESTS_TOTAL,
        telemetry.ERRORS_TOTAL,
        telemetry.IN_FLIGHT,
        telemetry.TOKENS_TOTAL,
        telemetry.QUEUE_LENGTH,
        telemetry.RUNTIME_INFO,
    }
    names.update(telemetry.REQUEST_LATENCY + s for s in SERIES_SUFFIXES)
    return names


def operator_series() -> set[str]:
    registry = CollectorRegistry()
    for metric in (
        operator_metrics.RECONCILES,
        operator_metrics.FINETUNEJOB_PROGRESS,
        operator_metrics.FINETUNEJOB_LOSS,
        operator_metrics.FINETUNEJOB_PHASE,
        operator_metrics.RETRAINS,
    ):
        registry.register(metric)
    return exported_series(registry)


def test_rules_and_dashboard_use_only_contract_and_operator_series() -> None:
    """Serving series come from the telemetry contract, the rest from the operator's metrics module."""
    unknown = used_metric_names() - contract_series() - operator_series()
    assert not unknown, f"rules/dashboard query series nobody exports: {sorted(unknown)}"


def test_server_exports_the_contract_series_it_owns_today() -> None:
    """The request/feedback series the server exports under the contract's names (drift is pending)."""
    server = exported_series(ServeMetrics().registry)
    owned = contract_series() - {telemetry.DRIFT_SCORE, telemetry.DRIFT_WINDOW, telemetry.ACCURACY}
    assert owned <= server, f"server lacks {sorted(owned - server)}"


def test_server_exports_every_contract_series_the_dashboard_uses() -> None:
    server = exported_series(ServeMetrics().registry)
    missing = (used_metric_names() & contract_series()) - server
    assert not missing, (
        f"the dashboard/rules use contract series the server does not export: {sorted(missing)}"
    )
