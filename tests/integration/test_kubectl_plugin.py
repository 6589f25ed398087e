"""`kubectl kubetune` through the real kubectl plugin mechanism against the emulated cluster.

kubectl finds `kubectl-kubetune` on PATH (the venv's bin dir); the test writes FineTuneJobs,
AdapterDeployments, pods, logs and events directly (no operator) and asserts what the plugin prints
and patches.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from emulator import EmulatedCluster

ROOT = Path(__file__).resolve().parents[2]
NS = "default"
VENV_BIN = Path(sys.executable).parent
T0 = "2026-01-01T00:00:00Z"


def plugin(cluster: EmulatedCluster, *args: str, env: dict[str, str] | None = None, timeout: float = 30):
    """`kubectl kubetune ARGS --kubeconfig=...` with kubectl resolving the plugin from PATH."""
    assert (VENV_BIN / "kubectl-kubetune").exists(), "the package is not installed in this environment"
    base = {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "KUBECTL": cluster.kubectl_path,
    }
    base.pop("KUBECONFIG", None)
    return subprocess.run(
        [cluster.kubectl_path, "kubetune", *args, f"--kubeconfig={cluster.kubeconfig}"],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**base, **(env or {})},
    )


def cond(type_: str, status: str, reason: str, message: str = "") -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": T0}


def create_ftj(cluster: EmulatedCluster, name: str, status: dict[str, Any], namespace: str = NS) -> None:
    doc = yaml.safe_load((ROOT / "examples/finetunejob-support-intents.yaml").read_text())
    doc["metadata"] = {"name": name, "namespace": namespace}
    cluster.create({**doc, "status": status})


def create_adep(cluster: EmulatedCluster, name: str, status: dict[str, Any]) -> None:
    doc = yaml.safe_load((ROOT / "examples/adapterdeployment-support-intents.yaml").read_text())
    doc["metadata"] = {"name": name, "namespace": NS}
    cluster.create({**doc, "status": status})


def create_pod(
    cluster: EmulatedCluster,
    job: str,
    name: str,
    component: str = "train",
    terminated: dict[str, Any] | None = None,
    log: str | None = None,
) -> None:
    labels = {"kubetune.dev/finetunejob": job, "app.kubernetes.io/component": component}
    containers = [{"name": "trainer", "image": "registry.example/trainer:1"}]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "spec": {"containers": containers, "restartPolicy": "Never"},
    }
    if terminated is not None:
        state = {"name": "trainer", "ready": False, "restartCount": 0, "state": {"terminated": terminated}}
        pod["status"] = {"phase": "Failed", "containerStatuses": [state]}
    cluster.create(pod)
    if log is not None:
        cluster.set_pod_log(NS, name, log, container="trainer")


def spec_of(cluster: EmulatedCluster, resource: str, name: str) -> dict[str, Any]:
    obj = cluster.get(resource, NS, name)
    assert obj is not None
    return obj["spec"]


RUNNING = {"phase": "Running", "message": "step 40/120, loss 0.5123", "progress": "40/120", "loss": 0.5123}
SUCCEEDED = {"phase": "Succeeded", "message": "training completed", "progress": "120/120", "accuracy": 0.9125}
HISTORY = [{"version": v, "uri": f"pvc://kubetune-output/support-intents/{v}"} for v in ("v1", "v2", "v3")]
ADEP_STATUS = {
    "phase": "Available",
    "activeAdapter": {"version": "v3", "accuracy": 0.91},
    "readyReplicas": 2,
    "history": HISTORY,
    "drift": 0.042,
}


def test_get_shows_progress_bars_accuracy_and_adapters(cluster: EmulatedCluster) -> None:
    create_ftj(cluster, "intents-a", RUNNING)
    create_ftj(cluster, "intents-b", SUCCEEDED)
    create_adep(cluster, "support-intents", ADEP_STATUS)
    cluster.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}})
    create_ftj(cluster, "elsewhere", {"phase": "Pending"}, namespace="team-a")

    both = plugin(cluster, "get")
    assert both.returncode == 0, both.stderr
    lines = both.stdout.splitlines()
    assert lines[0].split() == ["NAME", "PHASE", "PROGRESS", "LOSS", "ACCURACY", "AGE"]
    assert "[###-------] 40/120" in both.stdout and "[##########] 120/120" in both.stdout
    row_b = next(line for line in lines if line.startswith("intents-b"))
    assert "0.9125" in row_b
    adep_row = next(line for line in lines if line.startswith("support-intents"))
    assert adep_row.split() == ["support-intents", "Available", "v3", "0.9100", "(eval)", "2/2", "0.042"]
    assert "elsewhere" not in both.stdout  # the context's namespace only

    one = plugin(cluster, "get", "ftj", "intents-a")
    assert one.returncode == 0 and len(one.stdout.splitlines()) == 2 and "intents-a" in one.stdout

    by_name_only = plugin(cluster, "get", "support-intents")
    assert by_name_only.returncode == 0 and "ACTIVE VERSION" in by_name_only.stdout

    team = plugin(cluster, "-n", "team-a", "get", "ftj")
    assert team.returncode == 0 and "elsewhere" in team.stdout and "intents-a" not in team.stdout

    every = plugin(cluster, "get", "ftj", "-A")
    assert every.stdout.splitlines()[0].startswith("NAMESPACE")
    assert "team-a" in every.stdout and "intents-a" in every.stdout


def test_errors_are_one_line_with_exit_codes(cluster: EmulatedCluster) -> None:
    missing = plugin(cluster, "get", "ftj", "nope")
    assert missing.returncode == 1
    assert missing.stderr.strip() == "kubectl kubetune get: error: no FineTuneJob named nope"

    unknown = plugin(cluster, "watch", "nope")
    assert unknown.returncode == 1 and "FineTuneJob nope not found" in unknown.stderr

    no_kubectl = plugin(cluster, "get", env={"KUBECTL": "/nonexistent/kubectl"})
    assert no_kubectl.returncode == 1 and "kubectl not found" in no_kubectl.stderr

    bad = plugin(cluster, "promote", "support-intents")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1

    everywhere = plugin(cluster, "suspend", "x", "-A")
    assert everywhere.returncode == 2 and "only to get" in everywhere.stderr
    named_everywhere = plugin(cluster, "get", "ftj", "x", "-A")
    assert named_everywhere.returncode == 2 and "cannot be combined" in named_everywhere.stderr


def test_watch_exits_0_when_the_job_succeeds(cluster: EmulatedCluster) -> None:
    create_ftj(cluster, "intents", RUNNING)

    def finish() -> None:
        time.sleep(1.0)
        cluster.patch_status("ftj", NS, "intents", {"progress": "80/120", "loss": 0.3})
        time.sleep(1.0)
        cluster.patch_status("ftj", NS, "intents", SUCCEEDED)

    flipper = threading.Thread(target=finish)
    flipper.start()
    started = time.monotonic()
    result = plugin(cluster, "watch", "intents", "--interval", "200ms", "--timeout", "20s")
    flipper.join()
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 15
    lines = result.stdout.splitlines()
    assert "Running  [###-------] 40/120  loss 0.5123" in lines[0]
    assert any("[######----] 80/120  loss 0.3000" in line for line in lines)
    assert "Succeeded  [##########] 120/120" in lines[-1] and "accuracy 0.9125" in lines[-1]
    assert len(lines) == 3  # one line per change, none for unchanged polls


def test_watch_exits_1_on_failure_and_on_timeout(cluster: EmulatedCluster) -> None:
    create_ftj(cluster, "broken", {"phase": "Failed", "message": "dataset validation failed: row 17"})
    failed = plugin(cluster, "watch", "broken")
    assert failed.returncode == 1 and "Failed" in failed.stdout and "row 17" in failed.stdout

    create_ftj(cluster, "slow", RUNNING)
    slow = plugin(cluster, "watch", "slow", "--interval", "200ms", "--timeout", "1s")
    assert slow.returncode == 1 and "timed out after 1s" in slow.stderr and "phase Running" in slow.stderr


STEP_LOG = "\n".join(
    [
        "Loading checkpoint shards: 100%",
        json.dumps({"event": "phase", "phase": "Training"}),
        json.dumps({"event": "step", "step": 1, "totalSteps": 120, "loss": 2.0512, "lr": 0.0002}),
        json.dumps({"event": "step", "step": 2, "totalSteps": 120, "loss": 1.8391, "lr": 0.0002}),
    ]
)


def test_logs_pretty_prints_the_newest_training_pod(cluster: EmulatedCluster) -> None:
    create_ftj(cluster, "intents", RUNNING)
    create_pod(cluster, "intents", "intents-validate-aaaaa", component="validate-data", log="validated\n")
    create_pod(cluster, "intents", "intents-train-aaaaa", log="old attempt\n")
    create_pod(cluster, "intents", "intents-train-bbbbb", log=STEP_LOG + "\n")

    pretty = plugin(cluster, "logs", "intents")
    assert pretty.returncode == 0, pretty.stderr
    assert pretty.stdout.splitlines() == [
        "Loading checkpoint shards: 100%",
        "== Training",
        "step 1/120  loss 2.0512  lr 2.00e-04",
        "step 2/120  loss 1.8391  lr 2.00e-04",
    ]
    raw = plugin(cluster, "logs", "intents", "--raw", "--tail", "1")
    assert raw.returncode == 0 and json.loads(raw.stdout)["step"] == 2

    followed = plugin(cluster, "logs", "intents", "-f")
    assert followed.returncode == 0 and "step 2/120" in followed.stdout


def test_logs_fall_back_to_the_validation_pod(cluster: EmulatedCluster) -> None:
    create_ftj(cluster, "fresh", {"phase": "ValidatingData"})
    none_yet = plugin(cluster, "logs", "fresh")
    assert none_yet.returncode == 1 and "no validation or training pod yet" in none_yet.stderr
    create_pod(cluster, "fresh", "fresh-validate-aaaaa", component="validate-data", log="checking rows\n")
    validating = plugin(cluster, "logs", "fresh")
    assert validating.returncode == 0 and validating.stdout == "checking rows\n"


def test_suspend_and_resume_patch_spec_suspend(cluster: EmulatedCluster) -> None:
    create_ftj(cluster, "intents", RUNNING)
    suspended = plugin(cluster, "suspend", "intents")
    assert suspended.returncode == 0, suspended.stderr
    assert suspended.stdout.strip() == "finetunejob intents suspended"
    assert spec_of(cluster, "ftj", "intents")["suspend"] is True
    again = plugin(cluster, "suspend", "intents")
    assert again.returncode == 0 and "already suspended" in again.stdout

    resumed = plugin(cluster, "resume", "intents")
    assert resumed.returncode == 0 and spec_of(cluster, "ftj", "intents")["suspend"] is False

    create_ftj(cluster, "done", SUCCEEDED)
    refused = plugin(cluster, "suspend", "done")
    assert refused.returncode == 1
    assert "cannot suspend FineTuneJob done: it is Succeeded" in refused.stderr
    assert spec_of(cluster, "ftj", "done").get("suspend") in (None, False)


def test_rollback_and_promote_pin_spec_adapter_version(cluster: EmulatedCluster) -> None:
    create_adep(cluster, "support-intents", ADEP_STATUS)
    rolled = plugin(cluster, "rollback", "support-intents")
    assert rolled.returncode == 0, rolled.stderr
    assert "rolled back to v2 (was v3)" in rolled.stdout
    assert spec_of(cluster, "adep", "support-intents")["adapter"]["version"] == "v2"

    promoted = plugin(cluster, "promote", "support-intents", "--version", "v3")
    assert (
        promoted.returncode == 0 and spec_of(cluster, "adep", "support-intents")["adapter"]["version"] == "v3"
    )

    unknown = plugin(cluster, "promote", "support-intents", "--version", "v9")
    assert unknown.returncode == 1 and "known: v1, v2, v3" in unknown.stderr
    assert spec_of(cluster, "adep", "support-intents")["adapter"]["version"] == "v3"

    cleared = plugin(cluster, "promote", "support-intents", "--clear")
    assert cleared.returncode == 0
    adapter = spec_of(cluster, "adep", "support-intents")["adapter"]
    assert "version" not in adapter and adapter["fineTuneJobRef"] == {"name": "support-intents"}

    create_adep(cluster, "first", {**ADEP_STATUS, "activeAdapter": {"version": "v1"}, "history": HISTORY[:1]})
    nothing = plugin(cluster, "rollback", "first")
    assert nothing.returncode == 1 and "no version before v1" in nothing.stderr


def test_explain_failure_shows_condition_event_and_termination_reason(cluster: EmulatedCluster) -> None:
    message = "training failed (BackoffLimitExceeded): evaluation gate: accuracy 0.6100 < minAccuracy 0.85"
    create_ftj(
        cluster,
        "intents",
        {
            "phase": "Failed",
            "message": message,
            "conditions": [
                cond("SpecValid", "True", "Valid"),
                cond("Failed", "True", "BackoffLimitExceeded", message),
            ],
        },
    )
    involved = {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "name": "intents",
        "namespace": NS,
    }
    for name, obj, reason in (
        ("intents.1", involved, "BackoffLimitExceeded"),
        ("other.1", {**involved, "name": "other"}, "SomethingElse"),
    ):
        cluster.create(
            {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": name, "namespace": NS},
                "involvedObject": obj,
                "reason": reason,
                "message": f"Running -> Failed: {reason}",
                "type": "Warning",
                "count": 1,
                "lastTimestamp": T0,
            }
        )
    report = {
        "reason": "evaluation gate: accuracy 0.6100 < minAccuracy 0.85",
        "metrics": {"after_accuracy": 0.61},
    }
    terminated = {"exitCode": 4, "reason": "Error", "finishedAt": T0, "message": json.dumps(report)}
    create_pod(cluster, "intents", "intents-train-aaaaa", terminated=terminated)

    result = plugin(cluster, "explain-failure", "intents")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("FineTuneJob default/intents: Failed")
    assert f"BackoffLimitExceeded   {message}" in out  # the Failed condition's row
    assert "Running -> Failed: BackoffLimitExceeded" in out and "SomethingElse" not in out
    assert "pod intents-train-aaaaa, exit code 4, Error" in out
    assert "reason:  evaluation gate: accuracy 0.6100 < minAccuracy 0.85" in out
    assert "after_accuracy=0.6100" in out

    create_ftj(cluster, "fine", RUNNING)
    fine = plugin(cluster, "explain-failure", "fine")
    assert fine.returncode == 0 and "has not failed (phase Running)" in fine.stdout


@pytest.mark.parametrize("where", ["before", "after"])
def test_context_flag_is_passed_to_kubectl(cluster: EmulatedCluster, where: str) -> None:
    create_ftj(cluster, "intents", RUNNING)
    args = ["--context", "no-such-context", "get", "ftj"]
    if where == "after":
        args = ["get", "ftj", "--context", "no-such-context"]
    result = plugin(cluster, *args)
    assert result.returncode == 1 and "no-such-context" in result.stderr
