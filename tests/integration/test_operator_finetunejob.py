"""The real operator (`kubetune operator` subprocess, the chart's RBAC) against the real control plane.

The real Job controller makes the pods, the real scheduler places them on kwok's fake nodes (GPU
pods on the tainted GPU nodes), kwok runs them. The test plays only the kubelet: it says how each
pod ended (pods/status) and what it logged (kwok serves it through the kubelet API) — then asserts
what the operator made of it.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from controlplane import Cluster
from controlplane.expect import differences
from ftj_helpers import (
    INTENTS,
    ROOT,
    TIMEOUT,
    TRIAGE,
    apply,
    bind_claims,
    finish_job,
    ftj,
    wait_job,
    wait_job_condition,
    wait_phase,
    wait_pod,
)
from kubetune_operator.builders.training import build_config_map, build_training_job, build_validate_job
from operator_process import TRAINER_IMAGE, Operator

from kubetune.api.finetunejob import FineTuneJob


def expected(cluster: Cluster, name: str) -> tuple[FineTuneJob, dict[str, Any]]:
    body = ftj(cluster, name)
    return FineTuneJob.model_validate(body), body


def test_finetunejob_runs_to_succeeded_with_the_trainer_result(cluster: Cluster, operator: Operator) -> None:
    bind_claims(cluster)
    name = apply(cluster, INTENTS)
    vjob = wait_job(cluster, f"{name}-validate")
    cr, owner = expected(cluster, name)

    # What the pure builders produce is what the server stored (plus the server's own defaults).
    want_v = build_validate_job(cr, owner, TRAINER_IMAGE, "IfNotPresent", "kubetune-trainer", "500m", "2Gi")
    assert differences(want_v["spec"], vjob["spec"]) == []
    assert vjob["metadata"]["ownerReferences"] == want_v["metadata"]["ownerReferences"]
    cm = cluster.get("configmaps", cluster.ns, f"{name}-config")
    assert cm is not None and cm["data"] == build_config_map(cr, owner)["data"]
    sa = cluster.get("serviceaccounts", cluster.ns, "kubetune-trainer")
    assert sa is not None and sa["automountServiceAccountToken"] is False
    assert cluster.get("jobs.batch", cluster.ns, f"{name}-train") is None  # no GPU before the data is valid

    vpod = wait_pod(cluster, vjob["metadata"]["name"])
    assert vpod["spec"]["nodeName"].startswith("kwok-cpu-"), vpod["spec"]["nodeName"]
    wait_phase(cluster, name, "ValidatingData", operator)
    finish_job(cluster, vjob["metadata"]["name"])

    tjob = wait_job(cluster, f"{name}-train")
    want_t = build_training_job(cr, owner, TRAINER_IMAGE, "IfNotPresent", "kubetune-trainer")
    assert differences(want_t["spec"], tjob["spec"]) == []
    assert tjob["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"

    pod = wait_pod(cluster, tjob["metadata"]["name"])
    # The scheduler put the GPU pod on a GPU node: it requested nvidia.com/gpu and tolerates the taint.
    assert pod["spec"]["nodeName"].startswith("kwok-gpu-"), pod["spec"]["nodeName"]
    cluster.set_pod_log(
        cluster.ns,
        pod["metadata"]["name"],
        "\n".join(
            [
                "loading model",
                json.dumps(
                    {"event": "step", "step": 30, "totalSteps": 120, "loss": 0.8123, "etaSeconds": 55}
                ),
                json.dumps({"event": "checkpoint", "step": 25, "time": "2026-11-22T09:30:00Z"}),
            ]
        ),
    )
    assert "loading model" in cluster.kubectl("logs", pod["metadata"]["name"]).stdout  # the kubelet API path
    wait_phase(cluster, name, "Running", operator)
    running = cluster.wait_for(
        lambda: (o := ftj(cluster, name))["status"].get("progress") == "30/120" and o,
        timeout=TIMEOUT,
        message="progress 30/120",
    )
    assert running["status"]["loss"] == pytest.approx(0.8123)
    assert running["status"]["lastCheckpoint"] == {"step": 25, "time": "2026-11-22T09:30:00Z"}

    result = {
        "adapterUri": "pvc://kubetune-output/support-intents/adapter",
        "digest": "sha256:" + "c" * 64,
        "datasetDigest": "sha256:" + "d" * 64,
        "metrics": {
            "before_accuracy": 0.125,
            "baseline_accuracy": 0.93,
            "after_accuracy": 23 / 24,
            "train_loss": 0.0812345678,
        },
    }
    finish_job(cluster, tjob["metadata"]["name"], 0, result)
    done = wait_phase(cluster, name, "Succeeded", operator)["status"]
    # Printer columns: 4 significant digits, and the trainer's final loss, not the last streamed step's.
    assert (done["accuracy"], done["loss"]) == (0.9583, 0.08123)
    assert done["result"]["metrics"]["after_accuracy"] == 23 / 24
    assert (
        done["result"]["adapterUri"] == result["adapterUri"] and done["result"]["digest"] == result["digest"]
    )
    job_done = cluster.get("jobs.batch", cluster.ns, tjob["metadata"]["name"])
    assert done["observedGeneration"] == 1 and done["completionTime"] == job_done["status"]["completionTime"]
    conds = {c["type"]: c for c in done["conditions"]}
    assert conds["Ready"]["status"] == "True" and conds["Succeeded"]["status"] == "True"
    assert conds["DataValidated"]["status"] == "True" and conds["Running"]["status"] == "False"

    # Events are posted right after the status write: wait for the last one rather than racing it.
    expected_reasons = {"Created", "ValidatingData", "Training", "Completed"}
    cluster.wait_for(
        lambda: expected_reasons <= {e["reason"] for e in cluster.events(cluster.ns, name)},
        timeout=TIMEOUT,
        message=f"events {expected_reasons}",
    )
    table = cluster.kubectl("get", "ftj", name).stdout
    row = table.splitlines()[1].split()
    assert row[1:5] == ["Succeeded", "120/120", "0.08123", "0.9583"], table


def test_training_failure_reports_job_and_trainer_reason(cluster: Cluster, operator: Operator) -> None:
    bind_claims(cluster)
    name = apply(cluster, INTENTS)
    finish_job(cluster, f"{name}-validate")
    tjob = wait_job(cluster, f"{name}-train")
    # Exit code 4 (quality gate) is in the podFailurePolicy's FailJob rule: the real Job controller
    # fails the Job at once, without retries.
    finish_job(
        cluster,
        tjob["metadata"]["name"],
        4,
        {
            "reason": "gate failed: accuracy 0.61 < evaluation.minAccuracy 0.85",
            "metrics": {"after_accuracy": 0.61},
        },
    )
    assert len(cluster.pods_of(tjob["metadata"]["name"])) == 1
    status = wait_phase(cluster, name, "Failed", operator)["status"]
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "PodFailurePolicy"
    assert "accuracy 0.61 < evaluation.minAccuracy 0.85" in failed["message"]
    warnings = cluster.wait_for(
        lambda: [e for e in cluster.events(cluster.ns, name) if e["type"] == "Warning"],
        timeout=TIMEOUT,
        message="Warning events",
    )
    assert any("minAccuracy" in e["message"] for e in warnings)


def test_invalid_data_fails_before_any_gpu_job(cluster: Cluster, operator: Operator) -> None:
    bind_claims(cluster)
    name = apply(cluster, INTENTS)
    finish_job(cluster, f"{name}-validate", 3, {"reason": "train.jsonl row 17: field 'label' missing"})
    status = wait_phase(cluster, name, "Failed", operator)["status"]
    assert "row 17: field 'label' missing" in status["message"]
    assert cluster.get("jobs.batch", cluster.ns, f"{name}-train") is None


def test_operator_restart_creates_no_duplicates(cluster: Cluster, operator: Operator) -> None:
    bind_claims(cluster)
    name = apply(cluster, INTENTS)
    vjob = wait_job(cluster, f"{name}-validate")
    wait_phase(cluster, name, "ValidatingData", operator)
    operator.stop()
    operator.start()
    finish_job(cluster, vjob["metadata"]["name"])
    tjob = wait_job(cluster, f"{name}-train")
    operator.kill()  # no graceful shutdown this time
    operator.start()
    wait_pod(cluster, tjob["metadata"]["name"])
    wait_phase(cluster, name, "Running", operator)
    selector = f"kubetune.dev/finetunejob={name}"
    jobs = cluster.list("jobs.batch", cluster.ns, label_selector=selector)
    assert sorted(j["metadata"]["name"] for j in jobs) == [f"{name}-train", f"{name}-validate"]
    assert (
        cluster.get("jobs.batch", cluster.ns, f"{name}-validate")["metadata"]["uid"]
        == vjob["metadata"]["uid"]
    )
    assert (
        cluster.get("jobs.batch", cluster.ns, f"{name}-train")["metadata"]["uid"] == tjob["metadata"]["uid"]
    )
    assert len(cluster.list("configmaps", cluster.ns, label_selector=selector)) == 1
    assert len(cluster.pods_of(tjob["metadata"]["name"])) == 1


def test_suspend_and_resume(cluster: Cluster, operator: Operator) -> None:
    bind_claims(cluster)
    name = apply(cluster, INTENTS, suspend=True)
    wait_phase(cluster, name, "Suspended", operator)
    vjob = wait_job(cluster, f"{name}-validate")
    assert vjob["spec"]["suspend"] is True
    assert cluster.pods_of(vjob["metadata"]["name"]) == []  # the real Job controller starts none
    cluster.kubectl("patch", "ftj", name, "--type=merge", "-p", '{"spec": {"suspend": false}}')
    cluster.wait_for(
        lambda: cluster.get("jobs.batch", cluster.ns, f"{name}-validate")["spec"]["suspend"] is False,
        timeout=TIMEOUT,
        message="validate Job resumed",
    )
    finish_job(cluster, vjob["metadata"]["name"])
    tjob = wait_job(cluster, f"{name}-train")
    assert tjob["spec"]["suspend"] is False
    pod = wait_pod(cluster, tjob["metadata"]["name"])
    cluster.kubectl("patch", "ftj", name, "--type=merge", "-p", '{"spec": {"suspend": true}}')
    cluster.wait_for(
        lambda: cluster.get("jobs.batch", cluster.ns, f"{name}-train")["spec"]["suspend"] is True,
        timeout=TIMEOUT,
        message="training Job suspended",
    )
    # Suspending a running Job makes the real Job controller delete its pod (kwok lets it go).
    cluster.wait_for(
        lambda: cluster.get("pods", cluster.ns, pod["metadata"]["name"]) is None,
        timeout=TIMEOUT,
        message="training pod deleted on suspend",
    )
    wait_job_condition(cluster, f"{name}-train", "Suspended")
    wait_phase(cluster, name, "Suspended", operator)


def test_kueue_queued_job_waits_for_admission(cluster: Cluster, operator: Operator) -> None:
    bind_claims(cluster)
    name = apply(cluster, TRIAGE)
    finish_job(cluster, f"{name}-validate")
    tjob = wait_job(cluster, f"{name}-train")
    assert (
        tjob["spec"]["suspend"] is True
        and tjob["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-ml"
    )
    status = wait_phase(cluster, name, "Pending", operator)["status"]
    cluster.wait_for(
        lambda: "Kueue" in (ftj(cluster, name)["status"].get("message") or ""),
        timeout=TIMEOUT,
        message="queued message",
    )
    # Kueue admits: it injects a nodeSelector into the suspended Job's template (the real server
    # allows it only while the Job is suspended and has never started), then un-suspends.
    selector = {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    cluster.patch(
        "jobs.batch",
        cluster.ns,
        tjob["metadata"]["name"],
        {"spec": {"template": {"spec": {"nodeSelector": selector}}}},
    )
    cluster.patch("jobs.batch", cluster.ns, tjob["metadata"]["name"], {"spec": {"suspend": False}})
    pod = wait_pod(cluster, tjob["metadata"]["name"])
    assert pod["spec"]["nodeSelector"] == selector and pod["spec"]["nodeName"].startswith("kwok-gpu-")
    wait_phase(cluster, name, "Running", operator)
    admitted = cluster.get("jobs.batch", cluster.ns, tjob["metadata"]["name"])
    assert admitted["spec"]["suspend"] is False  # the operator did not fight Kueue
    assert admitted["spec"]["template"]["spec"]["nodeSelector"] == selector
    assert status["phase"] == "Pending"


def test_preemption_is_counted_not_a_failure(cluster: Cluster, operator: Operator) -> None:
    bind_claims(cluster)
    name = apply(cluster, INTENTS)
    finish_job(cluster, f"{name}-validate")
    tjob = wait_job(cluster, f"{name}-train")
    first = wait_pod(cluster, tjob["metadata"]["name"])
    cluster.finish_pod(cluster.ns, first["metadata"]["name"], 143, "", disrupted=True)
    # The podFailurePolicy's Ignore rule: the real Job controller replaces the pod without counting
    # a failure against backoffLimit.
    wait_pod(cluster, tjob["metadata"]["name"], count=2)
    status = cluster.wait_for(
        lambda: (
            (s := ftj(cluster, name).get("status", {})).get("preemptions") == 1
            and s.get("attempts") == 2
            and s
        ),
        timeout=TIMEOUT,
        message="preemption counted, second attempt seen",
    )
    assert status["failures"] == 0
    assert cluster.get("jobs.batch", cluster.ns, tjob["metadata"]["name"])["status"].get("failed", 0) == 0
    cluster.wait_for(
        lambda: any(e["reason"] == "Preempted" for e in cluster.events(cluster.ns, name)),
        timeout=TIMEOUT,
        message="Preempted event",
    )


# A spec the operator's model refuses past the CRD (a placement the chart's allow-lists do not grant):
# tests/integration/test_operator_placement.py. Two different Secrets, the case this file used, is now
# refused by the API server itself (tests/data/bad/ftj-two-secret-refs.yaml).


def test_deleting_the_finetunejob_deletes_its_children(cluster: Cluster, operator: Operator) -> None:
    bind_claims(cluster)
    name = apply(cluster, INTENTS)
    vjob = wait_job(cluster, f"{name}-validate")
    wait_pod(cluster, vjob["metadata"]["name"])
    cluster.kubectl("delete", "ftj", name, "--timeout=60s")  # kubectl waits: no finalizer may stick
    # The real garbage collector: FineTuneJob -> Jobs, ConfigMap -> Pods.
    cluster.wait_for(
        lambda: (
            not cluster.list("jobs.batch", cluster.ns)
            and not cluster.list("pods", cluster.ns)
            and not cluster.list("configmaps", cluster.ns, label_selector=f"kubetune.dev/finetunejob={name}")
        ),
        timeout=60,
        message="garbage collection",
    )


def test_bad_manifest_is_rejected_by_kubectl_apply(cluster: Cluster) -> None:
    result = cluster.kubectl(
        "apply", "-f", str(ROOT / "tests/data/bad/both-epochs-and-max-steps.yaml"), check=False
    )
    assert result.returncode != 0
    assert "set exactly one of training.epochs and training.maxSteps" in result.stderr
