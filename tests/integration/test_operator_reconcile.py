"""The operator reconciles from what it observes, driven by watch events (issue: event-driven reconcile).

The operator fixture runs with the default safety resync (300 s): everything below happens within
seconds only because a watch event of the FineTuneJob or of one of its children asked for it.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from controlplane import Cluster
from ftj_helpers import INTENTS, TIMEOUT, apply, bind_claims, finish_job, ftj, wait_job, wait_phase, wait_pod
from operator_process import Operator


def _running_job(cluster: Cluster, operator: Operator, **spec: object) -> tuple[str, dict[str, object]]:
    bind_claims(cluster)
    name = apply(cluster, INTENTS, **spec)
    finish_job(cluster, wait_job(cluster, f"{name}-validate")["metadata"]["name"])
    tjob = wait_job(cluster, f"{name}-train")
    wait_pod(cluster, tjob["metadata"]["name"])
    wait_phase(cluster, name, "Running", operator)
    return name, tjob


def _reasons(cluster: Cluster, name: str) -> list[str]:
    return [e.get("reason", "") for e in cluster.events(cluster.ns, name)]


def test_status_patched_to_succeeded_on_a_running_job_is_corrected(
    cluster: Cluster, operator: Operator
) -> None:
    name, _ = _running_job(cluster, operator)
    cluster.patch_status("ftj", cluster.ns, name, {"phase": "Succeeded", "message": "done!"})
    body = wait_phase(cluster, name, "Running", operator)
    assert body["status"]["message"] != "done!"
    cluster.wait_for(
        lambda: "StatusCorrected" in _reasons(cluster, name), timeout=TIMEOUT, message="StatusCorrected event"
    )
    # The live Job is still watched: a spec edit made after the forged status reaches it.
    cluster.patch("ftj", cluster.ns, name, {"spec": {"activeDeadlineSeconds": 7200}})
    cluster.wait_for(
        lambda: (
            (cluster.get("jobs.batch", cluster.ns, f"{name}-train") or {})
            .get("spec", {})
            .get("activeDeadlineSeconds")
            == 7200
        ),
        timeout=TIMEOUT,
        message="activeDeadlineSeconds propagated to the training Job",
    )


def test_deleted_training_job_is_recreated_and_counted_as_a_preemption(
    cluster: Cluster, operator: Operator
) -> None:
    name, tjob = _running_job(cluster, operator, maxPreemptions=1)
    first_uid = tjob["metadata"]["uid"]  # type: ignore[index]
    cluster.kubectl("delete", "job", f"{name}-train", "--wait=false")
    again = cluster.wait_for(
        lambda: (
            (j := cluster.get("jobs.batch", cluster.ns, f"{name}-train"))
            and j["metadata"]["uid"] != first_uid
            and j
        ),
        timeout=TIMEOUT,
        message="a new training Job",
    )
    # Same pod template: the new pod mounts the same output volume, where the trainer finds its newest
    # complete checkpoint and resumes (the trainer's resume is tested in test_chaos_trainer.py).
    assert again["spec"]["template"]["spec"]["volumes"] == tjob["spec"]["template"]["spec"]["volumes"]  # type: ignore[index]
    wait_pod(cluster, again["metadata"]["name"])
    body = wait_phase(cluster, name, "Running", operator)
    assert body["status"]["preemptions"] == 1, body["status"]
    assert "JobRecreated" in _reasons(cluster, name)

    # A second deletion exceeds maxPreemptions=1: the run fails, nothing is recreated.
    second_uid = again["metadata"]["uid"]
    cluster.kubectl("delete", "job", f"{name}-train", "--wait=false")
    body = wait_phase(cluster, name, "Failed", operator)
    assert "maxPreemptions=1" in body["status"]["message"], body["status"]
    time.sleep(2)
    job = cluster.get("jobs.batch", cluster.ns, f"{name}-train")
    assert job is None or job["metadata"]["uid"] == second_uid


def test_progress_reaches_status_from_the_followed_log(cluster: Cluster, operator: Operator) -> None:
    name, tjob = _running_job(cluster, operator)
    pod = wait_pod(cluster, tjob["metadata"]["name"])  # type: ignore[index]
    for step in (10, 20):
        line = json.dumps({"event": "step", "step": step, "totalSteps": 40, "loss": 1.0 / step})
        cluster.set_pod_log(cluster.ns, pod["metadata"]["name"], f"loading model\n{line}\n")
        cluster.wait_for(
            lambda s=step: ftj(cluster, name).get("status", {}).get("progress") == f"{s}/40",
            timeout=15,
            message=f"progress {step}/40 in status",
        )


def _clean_stop(cluster: Cluster, kubeconfig: Path, log: Path, sig: signal.Signals) -> str:
    op = Operator(kubeconfig, cluster.ns, log)
    op.start()
    try:
        # A forged phase that only a running operator corrects: it is up, watching, reconciling.
        cluster.patch_status("ftj", cluster.ns, "support-intents", {"phase": "Pending"})
        wait_phase(cluster, "support-intents", "Running", op)
        assert op.proc is not None
        op.proc.send_signal(sig)
        op.proc.wait(timeout=30)
        op.proc = None
    finally:
        op.stop()
    return op.logs()


def test_clean_stop_logs_no_error(cluster: Cluster, operator_kubeconfig: Path, tmp_path: Path) -> None:
    """SIGTERM (the kubelet's stop) and SIGINT (Ctrl-C) with a running job, its log followed."""
    bind_claims(cluster)
    name = apply(cluster, INTENTS)
    first = Operator(operator_kubeconfig, cluster.ns, tmp_path / "start.log")
    first.start()
    try:
        finish_job(cluster, wait_job(cluster, f"{name}-validate")["metadata"]["name"])
        wait_pod(cluster, wait_job(cluster, f"{name}-train")["metadata"]["name"])
        wait_phase(cluster, name, "Running", first)
    finally:
        first.stop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        logs = _clean_stop(cluster, operator_kubeconfig, tmp_path / f"{sig.name}.log", sig)
        stopping = logs[logs.index("is received") :] if "is received" in logs else logs
        bad = [line for line in stopping.splitlines() if " ERROR " in line or "Traceback" in line]
        assert bad == [], "\n".join(bad)
