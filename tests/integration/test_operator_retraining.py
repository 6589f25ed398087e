"""The operator's half of the closed loop against a real Prometheus: drift crosses the threshold in
PromQL -> one retraining FineTuneJob -> the challenger beats the champion -> promoted and rolled out.

The serving pods are played by a prometheus_client exporter whose gauge values the test sets.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from emulator import EmulatedCluster
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from promserver import Prometheus, free_port
from test_operator_adapterdeployment import play_deployment_controller, succeeded_finetunejob, wait_adep
from test_operator_finetunejob import NS, TIMEOUT, Operator, finish_job, run_pod, wait_job

from kubetune.api import telemetry

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("prometheus") is None, reason="Debian prometheus not installed")


class FakeServerMetrics:
    """What the serving pods export, with values the test controls (real exposition format)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ["adapter", "version"]
        self.drift = Gauge(telemetry.DRIFT_SCORE, "drift", [*labels, "kind"], registry=self.registry)
        self.window = Gauge(telemetry.DRIFT_WINDOW, "window", labels, registry=self.registry)
        self.accuracy = Gauge(telemetry.ACCURACY, "accuracy", labels, registry=self.registry)
        self.feedback = Counter(
            telemetry.FEEDBACK_TOTAL.removesuffix("_total"),
            "feedback",
            labels,
            registry=self.registry,
        )
        self.port = free_port()
        self.server, self.thread = start_http_server(self.port, addr="127.0.0.1", registry=self.registry)

    def set(self, version: str, drift: float, window: int, accuracy: float, feedback: int) -> None:
        self.drift.labels("support-intents", version, "embedding_cosine").set(drift)
        self.window.labels("support-intents", version).set(window)
        self.accuracy.labels("support-intents", version).set(accuracy)
        self.feedback.labels("support-intents", version).inc(feedback)

    def close(self) -> None:
        self.server.shutdown()


def apply_adep(cluster: EmulatedCluster, prometheus: Prometheus) -> None:
    doc = yaml.safe_load((ROOT / "examples/adapterdeployment-support-intents.yaml").read_text())
    doc["spec"]["monitoring"] = {
        "prometheusUrl": prometheus.url,
        "intervalSeconds": 5,
        "minSamples": 50,
        "drift": {"kind": "embedding_cosine", "threshold": 0.2, "forSeconds": 3},
        "accuracy": {"threshold": 0.8, "forSeconds": 3},
        "freshData": {"uri": "pvc://kubetune-data/fresh"},
    }
    doc["spec"]["retraining"] = {
        "enabled": True,
        "cooldownSeconds": 3600,
        "maxPerDay": 3,
        "minImprovement": 0.02,
    }
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))


def test_drift_in_prometheus_triggers_one_retrain_that_is_promoted(
    cluster: EmulatedCluster, operator: Operator, prometheus: Prometheus, metrics: FakeServerMetrics
) -> None:
    succeeded_finetunejob(cluster, "sha256:" + "aa" * 32)
    apply_adep(cluster, prometheus)
    cluster.wait_for(
        lambda: cluster.get("deployments.apps", NS, "support-intents-server"),
        timeout=TIMEOUT,
        message="Deployment",
    )
    play_deployment_controller(cluster, ready=2)
    champion = "support-intents-aaaaaaaa"
    wait_adep(
        cluster, operator, lambda s: (s.get("activeAdapter") or {}).get("version") == champion, "Available"
    )

    # In-distribution traffic: evaluated, no breach, no retrain.
    metrics.set(champion, drift=0.05, window=300, accuracy=0.95, feedback=120)
    calm = wait_adep(
        cluster,
        operator,
        lambda s: s.get("drift") is not None,
        "first evaluation",
    )
    assert calm["drift"] == pytest.approx(0.05)
    assert next(c for c in calm["conditions"] if c["type"] == "Drifted")["status"] == "False"

    # Drift: held above 0.2 for longer than forSeconds, with enough inputs in the window.
    metrics.set(champion, drift=0.45, window=300, accuracy=0.62, feedback=0)
    drifted = cluster.wait_for(
        lambda: (s := cluster.get("adep", NS, "support-intents")["status"]).get("retrains") and s,
        timeout=40,
        message="a retrain record",
    )
    (record,) = drifted["retrains"]
    child = cluster.get("ftj", NS, record["fineTuneJob"])
    assert child is not None and child["metadata"]["ownerReferences"][0]["kind"] == "AdapterDeployment"
    trigger = json.loads(child["metadata"]["annotations"]["kubetune.dev/triggered-by"])
    assert trigger["breach"] == "drift" and trigger["champion"] == champion and trigger["drift"] >= 0.2
    assert (
        child["spec"]["dataset"]["extra"][0]["uri"] == "pvc://kubetune-data/fresh/support-intents/train.jsonl"
    )
    assert child["spec"]["evaluation"]["championUri"] == "pvc://kubetune-output/support-intents"
    conds = {c["type"]: c for c in drifted["conditions"]}
    assert conds["Drifted"]["status"] == "True" and conds["Retraining"]["status"] == "True"

    # Still drifted on later evaluations: never a second retrain for the same breach.
    before = drifted["lastEvaluated"]
    cluster.wait_for(
        lambda: cluster.get("adep", NS, "support-intents")["status"]["lastEvaluated"] != before,
        timeout=20,
        message="another evaluation",
    )
    retrains = cluster.list("ftj", NS, label_selector="kubetune.dev/adapterdeployment=support-intents")
    assert [r["metadata"]["name"] for r in retrains] == [record["fineTuneJob"]]

    # The retrain runs (the test plays the Job controller) and beats the champion on the fresh hold-out.
    name = record["fineTuneJob"]
    finish_job(cluster, wait_job(cluster, f"{name}-validate")["metadata"]["name"], ok=True)
    tjob = wait_job(cluster, f"{name}-train")
    result: dict[str, Any] = {
        "adapterUri": f"pvc://kubetune-output/support-intents/{name}",
        "digest": "sha256:" + "bb" * 32,
        "metrics": {"after_accuracy": 0.91, "champion_accuracy": 0.64},
    }
    run_pod(cluster, tjob, "t1", phase="Succeeded", termination=result)
    finish_job(cluster, tjob["metadata"]["name"], ok=True)
    promoted = wait_adep(cluster, operator, lambda s: s.get("promoted") == name, "promoted")
    assert promoted["retrains"][0]["outcome"] == "Promoted"
    assert promoted["retrains"][0]["challenger"] == 0.91 and promoted["retrains"][0]["champion"] == 0.64
    new_version = f"{name}-bbbbbbbb"
    cluster.wait_for(
        lambda: (
            cluster.get("deployments.apps", NS, "support-intents-server")["spec"]["template"]["metadata"][
                "annotations"
            ]["kubetune.dev/adapter-version"]
            == new_version
        ),
        timeout=TIMEOUT,
        message="promoted adapter rolled out",
    )
    play_deployment_controller(cluster, ready=2)
    live = wait_adep(
        cluster,
        operator,
        lambda s: (s.get("activeAdapter") or {}).get("version") == new_version,
        "challenger serving",
    )
    assert live["activeAdapter"]["uri"] == result["adapterUri"]
    wanted = {"Retraining", "Promoted", "RolledOut"}
    cluster.wait_for(
        lambda: wanted <= {e["reason"] for e in cluster.events(NS, "support-intents")},
        timeout=TIMEOUT,
        message=f"events {wanted}",
    )


def test_retrain_now_annotation_starts_one_retrain_per_request(
    cluster: EmulatedCluster, operator: Operator, prometheus: Prometheus
) -> None:
    succeeded_finetunejob(cluster, "sha256:" + "aa" * 32)
    apply_adep(cluster, prometheus)
    cluster.wait_for(
        lambda: cluster.get("deployments.apps", NS, "support-intents-server"),
        timeout=TIMEOUT,
        message="Deployment",
    )
    play_deployment_controller(cluster, ready=2)
    wait_adep(cluster, operator, lambda s: s.get("activeAdapter"), "Available")
    cluster.kubectl(
        "annotate", "adep", "support-intents", "kubetune.dev/retrain-requested=2026-11-22T10:00:00Z"
    )
    status = wait_adep(
        cluster, operator, lambda s: s.get("lastRetrainRequest") == "2026-11-22T10:00:00Z", "request handled"
    )
    (record,) = status["retrains"]
    assert record["trigger"] == "manual request 2026-11-22T10:00:00Z"
    trigger = json.loads(
        cluster.get("ftj", NS, record["fineTuneJob"])["metadata"]["annotations"]["kubetune.dev/triggered-by"]
    )
    assert trigger["breach"] == "manual"
    # The same value is never handled twice; a second request while one runs is refused, visibly.
    cluster.kubectl(
        "annotate",
        "--overwrite",
        "adep",
        "support-intents",
        "kubetune.dev/retrain-requested=2026-11-22T11:00:00Z",
    )
    refused = wait_adep(
        cluster,
        operator,
        lambda s: s.get("lastRetrainRequest") == "2026-11-22T11:00:00Z",
        "second request handled",
    )
    assert len(refused["retrains"]) == 1
    cond = next(c for c in refused["conditions"] if c["type"] == "Retraining")
    assert cond["status"] == "True"  # the running retrain is still what the condition shows
    rejected = cluster.wait_for(
        lambda: [e for e in cluster.events(NS, "support-intents") if e["reason"] == "RetrainRequestRejected"],
        timeout=TIMEOUT,
        message="rejection event",
    )
    assert "already running" in rejected[0]["message"]
