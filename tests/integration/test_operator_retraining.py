"""The operator's half of the closed loop against a real Prometheus, on the real control plane: drift
crosses the threshold in PromQL -> one retraining FineTuneJob -> its Jobs run (the real Job
controller) and the challenger beats the champion -> promoted and rolled out (the real Deployment
controller; the test plays the readiness prober).

The serving pods' metrics are played by a prometheus_client exporter whose gauge values the test sets.
"""

from __future__ import annotations

import json
import shutil
from typing import Any

import pytest
import yaml
from adep_helpers import (
    ADEP,
    active_version,
    ready_pods,
    reasons,
    run_adapter_uri,
    succeeded_finetunejob,
    wait_adep,
    wait_deployment,
    wait_template_version,
)
from controlplane import Cluster
from ftj_helpers import ROOT, TIMEOUT, bind_claims, finish_job, wait_pod
from operator_process import Operator
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from promserver import Prometheus, free_port

from kubetune.api import telemetry

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


def paired_table(both: int, challenger_only: int, champion_only: int, neither: int) -> dict[str, Any]:
    """TrainResult.paired as the trainer writes it: both adapters on the same rows, row by row."""
    counts = {"challengerOnly": challenger_only, "championOnly": champion_only, "neither": neither}
    return {"metric": "accuracy", "both": both, **counts}


def apply_adep(cluster: Cluster, prometheus: Prometheus) -> None:
    doc = yaml.safe_load((ROOT / "examples/k8s/adapterdeployment-support-intents.yaml").read_text())
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


def serving_champion(cluster: Cluster, operator: Operator, prometheus: Prometheus) -> str:
    """The support-intents adapter serving on ready pods, with monitoring and retraining on."""
    bind_claims(cluster)
    succeeded_finetunejob(cluster, "sha256:" + "aa" * 32)
    apply_adep(cluster, prometheus)
    wait_deployment(cluster)
    ready_pods(cluster)
    champion = "support-intents-aaaaaaaa"
    wait_adep(
        cluster,
        operator,
        lambda s: active_version(s) == champion and s.get("phase") == "Available",
        "Available",
    )
    return champion


def test_drift_in_prometheus_triggers_one_retrain_that_is_promoted(
    cluster: Cluster, operator: Operator, prometheus: Prometheus, metrics: FakeServerMetrics
) -> None:
    champion = serving_champion(cluster, operator, prometheus)

    # In-distribution traffic: evaluated, no breach, no retrain.
    metrics.set(champion, drift=0.05, window=300, accuracy=0.95, feedback=120)
    calm = wait_adep(cluster, operator, lambda s: s.get("drift") is not None, "first evaluation")
    assert calm["drift"] == pytest.approx(0.05)
    assert next(c for c in calm["conditions"] if c["type"] == "Drifted")["status"] == "False"
    assert not calm.get("retrains")

    # Drift: held above 0.2 for longer than forSeconds, with enough inputs in the window.
    metrics.set(champion, drift=0.45, window=300, accuracy=0.62, feedback=0)
    drifted = wait_adep(cluster, operator, lambda s: s.get("retrains"), "a retrain record", timeout=40)
    (record,) = drifted["retrains"]
    name = record["fineTuneJob"]
    child = cluster.get("ftj", cluster.ns, name)
    assert child is not None
    (owner,) = child["metadata"]["ownerReferences"]
    assert owner["kind"] == "AdapterDeployment" and owner["name"] == ADEP
    trigger = json.loads(child["metadata"]["annotations"]["kubetune.dev/triggered-by"])
    assert trigger["breach"] == "drift" and trigger["champion"] == champion and trigger["drift"] >= 0.2
    assert (
        child["spec"]["dataset"]["extra"][0]["uri"] == "pvc://kubetune-data/fresh/support-intents/train.jsonl"
    )
    assert child["spec"]["evaluation"]["championUri"] == drifted["activeAdapter"]["uri"]
    # Judged on the recipe's validation rows plus the fresh hold-out (issue #23).
    assert child["spec"]["dataset"]["validation"]["uri"].endswith("/support-intents/validation.jsonl")
    assert [v["uri"] for v in child["spec"]["dataset"]["validationExtra"]] == [
        "pvc://kubetune-data/fresh/support-intents/holdout.jsonl"
    ]
    conds = {c["type"]: c for c in drifted["conditions"]}
    assert conds["Drifted"]["status"] == "True" and conds["Retraining"]["status"] == "True"

    # Still drifted on later evaluations: never a second retrain for the same breach.
    before = drifted["lastEvaluated"]
    wait_adep(cluster, operator, lambda s: s["lastEvaluated"] != before, "another evaluation", timeout=20)
    retrains = cluster.list("ftj", cluster.ns, label_selector=f"kubetune.dev/adapterdeployment={ADEP}")
    assert [r["metadata"]["name"] for r in retrains] == [name]

    # The retrain runs (the real Job controller, its pods ended as a kubelet reports it) and beats
    # the champion on 120 held-out rows, row by row: 34 fixed, 2 broken.
    finish_job(cluster, f"{name}-validate")
    result: dict[str, Any] = {
        "adapterUri": f"pvc://kubetune-output/support-intents/{name}",
        "digest": "sha256:" + "bb" * 32,
        "metrics": {"after_accuracy": 109 / 120, "champion_accuracy": 77 / 120},
        "validationRows": 120,
        "paired": paired_table(both=75, challenger_only=34, champion_only=2, neither=9),
    }
    finish_job(cluster, f"{name}-train", 0, result)
    promoted = wait_adep(cluster, operator, lambda s: s.get("promoted") == name, "promoted")
    record = promoted["retrains"][0]
    assert (record["outcome"], record["rows"]) == ("Promoted", 120)
    assert (record["challenger"], record["champion"]) == (pytest.approx(109 / 120), pytest.approx(77 / 120))
    assert record["difference"] == pytest.approx(32 / 120, abs=1e-4)
    assert 0 < record["lowerBound"] < record["difference"] < record["upperBound"] < 1
    message = next(c for c in promoted["conditions"] if c["type"] == "Promoted")["message"]
    assert "on 120 held-out rows: difference +0.267, 95% interval [" in message
    new_version = f"{name}-bbbbbbbb"
    wait_template_version(cluster, new_version)  # the promoted adapter rolls out
    ready_pods(cluster)
    live = wait_adep(
        cluster,
        operator,
        lambda s: active_version(s) == new_version and s.get("phase") == "Available",
        "challenger serving",
    )
    assert live["activeAdapter"]["uri"] == result["adapterUri"]
    wanted = {"Retraining", "Promoted", "RolledOut"}
    cluster.wait_for(lambda: wanted <= reasons(cluster), timeout=TIMEOUT, message=f"events {wanted}")


def test_retrain_now_annotation_starts_one_retrain_per_request(
    cluster: Cluster, operator: Operator, prometheus: Prometheus
) -> None:
    serving_champion(cluster, operator, prometheus)
    cluster.kubectl("annotate", "adep", ADEP, "kubetune.dev/retrain-requested=2026-11-22T10:00:00Z")
    status = wait_adep(
        cluster, operator, lambda s: s.get("lastRetrainRequest") == "2026-11-22T10:00:00Z", "request handled"
    )
    (record,) = status["retrains"]
    assert record["trigger"] == "manual request 2026-11-22T10:00:00Z"
    child = cluster.get("ftj", cluster.ns, record["fineTuneJob"])
    assert child is not None
    trigger = json.loads(child["metadata"]["annotations"]["kubetune.dev/triggered-by"])
    assert trigger["breach"] == "manual"
    # The same value is never handled twice; a second request while one runs is refused, visibly.
    cluster.kubectl(
        "annotate", "--overwrite", "adep", ADEP, "kubetune.dev/retrain-requested=2026-11-22T11:00:00Z"
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
        lambda: [e for e in cluster.events(cluster.ns, ADEP) if e["reason"] == "RetrainRequestRejected"],
        timeout=TIMEOUT,
        message="rejection event",
    )
    assert "already running" in rejected[0]["message"]
    retrains = cluster.list("ftj", cluster.ns, label_selector=f"kubetune.dev/adapterdeployment={ADEP}")
    assert [r["metadata"]["name"] for r in retrains] == [record["fineTuneJob"]]
    # The one retrain really runs: the real Job controller made its validation pod.
    assert wait_pod(cluster, f"{record['fineTuneJob']}-validate")["status"]["phase"] == "Running"


def test_a_retrain_judged_on_fewer_rows_than_the_gate_minimum_waits_for_labels(
    cluster: Cluster, operator: Operator, prometheus: Prometheus
) -> None:
    """Issues #26 and #23: the recipe's minAccuracy (0.85) is for its own validation rows, and 28 rows
    are fewer than retraining.gate.minRows (50): whatever the scores, the gate does not decide. Not a
    failure, not a promotion: the champion serves on, n and the labels still wanted are in status and
    events, and the next retrain may start."""
    champion = serving_champion(cluster, operator, prometheus)
    cluster.kubectl("annotate", "adep", ADEP, "kubetune.dev/retrain-requested=2026-11-22T10:00:00Z")
    status = wait_adep(cluster, operator, lambda s: s.get("retrains"), "a retrain record")
    name = status["retrains"][0]["fineTuneJob"]
    child = cluster.get("ftj", cluster.ns, name)
    assert child is not None and "minAccuracy" not in child["spec"]["evaluation"]
    assert child["spec"]["dataset"]["validationExtra"][-1]["uri"].endswith("/support-intents/holdout.jsonl")

    finish_job(cluster, f"{name}-validate")
    tie = {
        "adapterUri": run_adapter_uri(cluster, name),
        "digest": "sha256:" + "cc" * 32,
        "metrics": {"after_accuracy": 28 / 28, "champion_accuracy": 23 / 28},
        "validationRows": 28,
        "paired": paired_table(both=23, challenger_only=5, champion_only=0, neither=0),
    }
    finish_job(cluster, f"{name}-train", 0, tie)
    judged = wait_adep(
        cluster, operator, lambda s: s["retrains"][0]["outcome"] not in ("Pending", "Running"), "judged"
    )
    record = judged["retrains"][0]
    assert record["outcome"] == "WaitingForLabels", record
    assert (record["rows"], record["metric"]) == (28, "accuracy")
    assert (record["challenger"], record["champion"]) == (1.0, pytest.approx(23 / 28))
    assert record["lowerBound"] <= record["difference"] <= record["upperBound"]
    assert active_version(judged) == champion and not judged.get("promoted")
    conds = {c["type"]: c for c in judged["conditions"]}
    assert (conds["Promoted"]["status"], conds["Promoted"]["reason"]) == ("False", "WaitingForLabels")
    assert conds["Retraining"]["reason"] == "WaitingForLabels"
    events = cluster.wait_for(
        lambda: [e for e in cluster.events(cluster.ns, ADEP) if e["reason"] == "WaitingForLabels"],
        timeout=TIMEOUT,
        message="WaitingForLabels event",
    )
    assert events[0]["type"] == "Normal"
    text = events[0]["message"]
    assert "challenger 1.000 vs champion 0.821 on 28 held-out rows" in text
    assert "fewer than retraining.gate.minRows 50" in text and "label about 110 more inputs" in text
    assert "RetrainFailed" not in reasons(cluster)

    # Nothing blocks the next retrain, which trains and is judged on the labels gathered since.
    cluster.kubectl(
        "annotate", "--overwrite", "adep", ADEP, "kubetune.dev/retrain-requested=2026-11-22T11:00:00Z"
    )
    again = wait_adep(cluster, operator, lambda s: len(s.get("retrains") or []) == 2, "a second retrain")
    assert again["retrains"][1]["fineTuneJob"] != name
