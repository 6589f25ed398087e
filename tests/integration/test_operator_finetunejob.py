"""The real operator (`kubetune operator` subprocess) against the emulated API server, driven by kubectl.

The test plays the Job controller and the kubelet: it creates the pods a Job would have, patches Job
and Pod status, and sets pod logs — then asserts what the operator made of it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from emulator import EmulatedCluster
from kubetune_operator.builders.training import build_config_map, build_training_job, build_validate_job

from kubetune.api.finetunejob import FineTuneJob

ROOT = Path(__file__).resolve().parents[2]
INTENTS = ROOT / "examples/finetunejob-support-intents.yaml"
NS = "default"
TIMEOUT = 20


class Operator:
    """`kubetune operator --standalone -n default` as a subprocess; start/stop like a pod restart."""

    def __init__(self, cluster: EmulatedCluster, log_path: Path) -> None:
        self.cluster = cluster
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **self.cluster.env,
            "KUBETUNE_RESYNC_SECONDS": "0.3",
            "KUBETUNE_METRICS_PORT": "0",
            "KUBETUNE_LIVENESS_PORT": "0",
            "KUBETUNE_TRAINER_IMAGE": "registry.example/trainer:1.2.3",
            "KUBETUNE_SERVER_IMAGE": "registry.example/server:1.2.3",
        }
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kubetune.cli", "operator", "--standalone", "-n", NS],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")


def ftj(cluster: EmulatedCluster, name: str) -> dict[str, Any]:
    obj = cluster.get("ftj", NS, name)
    assert obj is not None
    return obj


def wait_phase(cluster: EmulatedCluster, name: str, phase: str, operator: Operator) -> dict[str, Any]:
    try:
        return cluster.wait_for(
            lambda: (o := ftj(cluster, name)).get("status", {}).get("phase") == phase and o,
            timeout=TIMEOUT,
            message=f"{name} phase {phase}",
        )
    except AssertionError:
        print(operator.logs()[-6000:])
        raise


def wait_job(cluster: EmulatedCluster, name: str) -> dict[str, Any]:
    return cluster.wait_for(
        lambda: cluster.get("jobs.batch", NS, name), timeout=TIMEOUT, message=f"Job {name}"
    )


def run_pod(
    cluster: EmulatedCluster,
    job: dict[str, Any],
    suffix: str,
    phase: str = "Running",
    termination: dict[str, Any] | str | None = None,
    exit_code: int = 0,
    disrupted: bool = False,
) -> dict[str, Any]:
    """Create the pod the Job controller would create from the Job's template, then set its status."""
    template = job["spec"]["template"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{job['metadata']['name']}-{suffix}",
            "namespace": NS,
            "labels": {**template["metadata"]["labels"], "job-name": job["metadata"]["name"]},
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "name": job["metadata"]["name"],
                    "uid": job["metadata"]["uid"],
                    "controller": True,
                }
            ],
        },
        "spec": template["spec"],
    }
    cluster.create(pod)
    status: dict[str, Any] = {"phase": phase, "conditions": []}
    if disrupted:
        status["conditions"].append(
            {"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}
        )
    if phase in ("Succeeded", "Failed"):
        message = termination if isinstance(termination, str) else json.dumps(termination or {})
        status["containerStatuses"] = [
            {
                "name": "trainer",
                "state": {
                    "terminated": {
                        "exitCode": exit_code,
                        "message": message,
                        "finishedAt": "2026-11-22T10:00:00Z",
                        "reason": "Completed" if exit_code == 0 else "Error",
                    }
                },
            }
        ]
    cluster.patch_status("pods", NS, pod["metadata"]["name"], status)
    return pod


def finish_job(cluster: EmulatedCluster, name: str, ok: bool, reason: str = "") -> None:
    cond = {
        "type": "Complete" if ok else "Failed",
        "status": "True",
        "reason": reason or ("Completed" if ok else "BackoffLimitExceeded"),
        "message": "done",
    }
    cluster.patch_status(
        "jobs.batch",
        NS,
        name,
        {
            "active": 0,
            "succeeded": 1 if ok else 0,
            "failed": 0 if ok else 1,
            "startTime": "2026-11-22T09:00:00Z",
            "completionTime": "2026-11-22T10:00:00Z",
            "conditions": [cond],
        },
    )


def apply(cluster: EmulatedCluster, path: Path, **spec: Any) -> str:
    doc = yaml.safe_load(path.read_text())
    doc["spec"].update(spec)
    result = cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))
    assert "created" in result.stdout or "configured" in result.stdout, result.stdout
    return str(doc["metadata"]["name"])


def expected(cluster: EmulatedCluster, name: str) -> tuple[FineTuneJob, dict[str, Any]]:
    body = ftj(cluster, name)
    return FineTuneJob.model_validate(body), body


def test_finetunejob_runs_to_succeeded_with_the_trainer_result(
    cluster: EmulatedCluster, operator: Operator
) -> None:
    name = apply(cluster, INTENTS)
    vjob = wait_job(cluster, f"{name}-validate")
    cr, owner = expected(cluster, name)
    image = "registry.example/trainer:1.2.3"

    # The exact objects the pure builders produce, nothing more or less.
    want_v = build_validate_job(cr, owner, image, "IfNotPresent", "kubetune-trainer", "500m", "2Gi")
    assert (
        vjob["spec"] == want_v["spec"]
        and vjob["metadata"]["ownerReferences"] == want_v["metadata"]["ownerReferences"]
    )
    cm = cluster.get("configmaps", NS, f"{name}-config")
    assert cm is not None and cm["data"] == build_config_map(cr, owner)["data"]
    sa = cluster.get("serviceaccounts", NS, "kubetune-trainer")
    assert sa is not None and sa["automountServiceAccountToken"] is False
    assert cluster.get("jobs.batch", NS, f"{name}-train") is None  # no GPU before the data is valid

    run_pod(cluster, vjob, "v1")
    cluster.patch_status("jobs.batch", NS, vjob["metadata"]["name"], {"active": 1})
    wait_phase(cluster, name, "ValidatingData", operator)
    finish_job(cluster, vjob["metadata"]["name"], ok=True)

    tjob = wait_job(cluster, f"{name}-train")
    want_t = build_training_job(cr, owner, image, "IfNotPresent", "kubetune-trainer")
    assert tjob["spec"] == want_t["spec"]
    assert tjob["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1

    pod = run_pod(cluster, tjob, "t1")
    cluster.set_pod_log(
        NS,
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
    cluster.patch_status(
        "jobs.batch", NS, tjob["metadata"]["name"], {"active": 1, "startTime": "2026-11-22T09:00:00Z"}
    )
    running = wait_phase(cluster, name, "Running", operator)
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
        "metrics": {"before_accuracy": 0.125, "baseline_accuracy": 0.93, "after_accuracy": 0.9583},
    }
    cluster.patch_status(
        "pods",
        NS,
        pod["metadata"]["name"],
        {
            "phase": "Succeeded",
            "containerStatuses": [
                {
                    "name": "trainer",
                    "state": {
                        "terminated": {
                            "exitCode": 0,
                            "message": json.dumps(result),
                            "finishedAt": "2026-11-22T10:00:00Z",
                        }
                    },
                }
            ],
        },
    )
    finish_job(cluster, tjob["metadata"]["name"], ok=True)
    done = wait_phase(cluster, name, "Succeeded", operator)["status"]
    assert done["accuracy"] == pytest.approx(0.9583)
    assert (
        done["result"]["adapterUri"] == result["adapterUri"] and done["result"]["digest"] == result["digest"]
    )
    assert done["observedGeneration"] == 1 and done["completionTime"] == "2026-11-22T10:00:00Z"
    conds = {c["type"]: c for c in done["conditions"]}
    assert conds["Ready"]["status"] == "True" and conds["Succeeded"]["status"] == "True"
    assert conds["DataValidated"]["status"] == "True" and conds["Running"]["status"] == "False"

    # Events are posted right after the status write: wait for the last one rather than racing it.
    expected_reasons = {"Created", "ValidatingData", "Training", "Completed"}
    cluster.wait_for(
        lambda: expected_reasons <= {e["reason"] for e in cluster.events(NS, name)},
        timeout=TIMEOUT,
        message=f"events {expected_reasons}",
    )
    table = cluster.kubectl("get", "ftj", name).stdout
    assert "Succeeded" in table and "0.9583" in table and "120/120" in table, table


def test_training_failure_reports_job_and_trainer_reason(
    cluster: EmulatedCluster, operator: Operator
) -> None:
    name = apply(cluster, INTENTS)
    vjob = wait_job(cluster, f"{name}-validate")
    finish_job(cluster, vjob["metadata"]["name"], ok=True)
    tjob = wait_job(cluster, f"{name}-train")
    run_pod(
        cluster,
        tjob,
        "t1",
        phase="Failed",
        exit_code=4,
        termination={
            "reason": "gate failed: accuracy 0.61 < evaluation.minAccuracy 0.85",
            "metrics": {"after_accuracy": 0.61},
        },
    )
    finish_job(cluster, tjob["metadata"]["name"], ok=False, reason="PodFailurePolicy")
    status = wait_phase(cluster, name, "Failed", operator)["status"]
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "PodFailurePolicy"
    assert "accuracy 0.61 < evaluation.minAccuracy 0.85" in failed["message"]
    warnings = cluster.wait_for(
        lambda: [e for e in cluster.events(NS, name) if e["type"] == "Warning"],
        timeout=TIMEOUT,
        message="Warning events",
    )
    assert any("minAccuracy" in e["message"] for e in warnings)


def test_invalid_data_fails_before_any_gpu_job(cluster: EmulatedCluster, operator: Operator) -> None:
    name = apply(cluster, INTENTS)
    vjob = wait_job(cluster, f"{name}-validate")
    run_pod(
        cluster,
        vjob,
        "v1",
        phase="Failed",
        exit_code=3,
        termination={"reason": "train.jsonl row 17: field 'label' missing"},
    )
    finish_job(cluster, vjob["metadata"]["name"], ok=False, reason="PodFailurePolicy")
    status = wait_phase(cluster, name, "Failed", operator)["status"]
    assert "row 17: field 'label' missing" in status["message"]
    assert cluster.get("jobs.batch", NS, f"{name}-train") is None


def test_operator_restart_creates_no_duplicates(cluster: EmulatedCluster, operator: Operator) -> None:
    name = apply(cluster, INTENTS)
    vjob = wait_job(cluster, f"{name}-validate")
    wait_phase(cluster, name, "Pending", operator)
    operator.stop()
    operator.start()
    finish_job(cluster, vjob["metadata"]["name"], ok=True)
    tjob = wait_job(cluster, f"{name}-train")
    operator.stop()
    operator.start()
    run_pod(cluster, tjob, "t1")
    cluster.patch_status("jobs.batch", NS, tjob["metadata"]["name"], {"active": 1})
    wait_phase(cluster, name, "Running", operator)
    selector = f"kubetune.dev/finetunejob={name}"
    jobs = cluster.list("jobs.batch", NS, label_selector=selector)
    assert sorted(j["metadata"]["name"] for j in jobs) == [f"{name}-train", f"{name}-validate"]
    assert cluster.get("jobs.batch", NS, f"{name}-validate")["metadata"]["uid"] == vjob["metadata"]["uid"]
    assert cluster.get("jobs.batch", NS, f"{name}-train")["metadata"]["uid"] == tjob["metadata"]["uid"]
    assert len(cluster.list("configmaps", NS, label_selector=selector)) == 1


def test_suspend_and_resume(cluster: EmulatedCluster, operator: Operator) -> None:
    name = apply(cluster, INTENTS, suspend=True)
    wait_phase(cluster, name, "Suspended", operator)
    vjob = wait_job(cluster, f"{name}-validate")
    assert vjob["spec"]["suspend"] is True
    cluster.kubectl("patch", "ftj", name, "--type=merge", "-p", '{"spec": {"suspend": false}}')
    cluster.wait_for(
        lambda: cluster.get("jobs.batch", NS, f"{name}-validate")["spec"]["suspend"] is False,
        timeout=TIMEOUT,
        message="validate Job resumed",
    )
    finish_job(cluster, vjob["metadata"]["name"], ok=True)
    tjob = wait_job(cluster, f"{name}-train")
    assert tjob["spec"]["suspend"] is False
    cluster.kubectl("patch", "ftj", name, "--type=merge", "-p", '{"spec": {"suspend": true}}')
    cluster.wait_for(
        lambda: cluster.get("jobs.batch", NS, f"{name}-train")["spec"]["suspend"] is True,
        timeout=TIMEOUT,
        message="training Job suspended",
    )
    wait_phase(cluster, name, "Suspended", operator)


def test_kueue_queued_job_waits_for_admission(cluster: EmulatedCluster, operator: Operator) -> None:
    name = apply(cluster, ROOT / "examples/finetunejob-support-triage.yaml")
    vjob = wait_job(cluster, f"{name}-validate")
    finish_job(cluster, vjob["metadata"]["name"], ok=True)
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
    # Kueue admits: it may inject a nodeSelector into the suspended Job's template, then un-suspends.
    cluster.patch(
        "jobs.batch",
        NS,
        tjob["metadata"]["name"],
        {
            "spec": {
                "template": {
                    "spec": {"nodeSelector": {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}}
                }
            }
        },
    )
    cluster.patch("jobs.batch", NS, tjob["metadata"]["name"], {"spec": {"suspend": False}})
    run_pod(cluster, cluster.get("jobs.batch", NS, tjob["metadata"]["name"]), "t1")
    cluster.patch_status("jobs.batch", NS, tjob["metadata"]["name"], {"active": 1})
    wait_phase(cluster, name, "Running", operator)
    admitted = cluster.get("jobs.batch", NS, tjob["metadata"]["name"])
    assert admitted["spec"]["suspend"] is False  # the operator did not fight Kueue
    assert admitted["spec"]["template"]["spec"]["nodeSelector"] == {
        "cloud.google.com/gke-accelerator": "nvidia-h100-80gb"
    }
    assert status["phase"] == "Pending"


def test_preemption_is_counted_not_a_failure(cluster: EmulatedCluster, operator: Operator) -> None:
    name = apply(cluster, INTENTS)
    vjob = wait_job(cluster, f"{name}-validate")
    finish_job(cluster, vjob["metadata"]["name"], ok=True)
    tjob = wait_job(cluster, f"{name}-train")
    run_pod(cluster, tjob, "t1", phase="Failed", exit_code=143, disrupted=True)
    run_pod(cluster, tjob, "t2")
    cluster.patch_status("jobs.batch", NS, tjob["metadata"]["name"], {"active": 1})
    status = cluster.wait_for(
        lambda: (s := ftj(cluster, name).get("status", {})).get("preemptions") == 1 and s,
        timeout=TIMEOUT,
        message="preemption counted",
    )
    assert status["failures"] == 0 and status["attempts"] == 2
    cluster.wait_for(
        lambda: any(e["reason"] == "Preempted" for e in cluster.events(NS, name)),
        timeout=TIMEOUT,
        message="Preempted event",
    )


def test_spec_invalid_past_the_schema_fails_with_a_clear_condition(
    cluster: EmulatedCluster, operator: Operator
) -> None:
    # Passes the CRD schema and CEL, but the operator's model rejects it: two different s3 Secrets.
    name = apply(
        cluster,
        INTENTS,
        dataset={"train": {"uri": "s3://tickets/train.jsonl", "secretRef": {"name": "a"}}},
        output={"uri": "s3://adapters/intents", "secretRef": {"name": "b"}},
    )
    status = wait_phase(cluster, name, "Failed", operator)["status"]
    spec_valid = next(c for c in status["conditions"] if c["type"] == "SpecValid")
    assert spec_valid["status"] == "False" and "use one Secret for all locations" in spec_valid["message"]
    assert cluster.list("jobs.batch", NS) == []
    assert operator.proc is not None and operator.proc.poll() is None  # the operator did not crash


def test_deleting_the_finetunejob_deletes_its_children(cluster: EmulatedCluster, operator: Operator) -> None:
    name = apply(cluster, INTENTS)
    wait_job(cluster, f"{name}-validate")
    cluster.kubectl("delete", "ftj", name)
    cluster.wait_for(
        lambda: (
            not cluster.list("jobs.batch", NS)
            and not cluster.list("configmaps", NS, label_selector=f"kubetune.dev/finetunejob={name}")
        ),
        timeout=TIMEOUT,
        message="GC",
    )


def test_bad_manifest_is_rejected_by_kubectl_apply(cluster: EmulatedCluster) -> None:
    result = cluster.kubectl(
        "apply", "-f", str(ROOT / "examples/bad/both-epochs-and-max-steps.yaml"), check=False
    )
    assert result.returncode != 0
    assert "set exactly one of training.epochs and training.maxSteps" in result.stderr
    assert os.environ.get("KUBECONFIG") != cluster.kubeconfig
