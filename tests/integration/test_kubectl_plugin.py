"""`kubectl kubetune` through the real kubectl plugin mechanism against the real control plane.

kubectl finds `kubectl-kubetune` on PATH (the venv's bin dir). No operator runs here: the tests play
its output as a fixture, creating FineTuneJobs and AdapterDeployments and writing their status
through the status subresource (our own CRs only; acceptable because nothing else writes them).
Pods are ordinary hand-made pods that the real scheduler places on kwok's CPU nodes; the test plays
their kubelet (what they logged via set_pod_log, served by kwok through the kubelet API to the real
`kubectl logs`; how they ended via finish_pod). Then it asserts what the plugin prints and patches.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from controlplane import Cluster

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
T0 = "2026-01-01T00:00:00Z"
TIMEOUT = 30


def plugin(cluster: Cluster, *args: str, env: dict[str, str] | None = None, timeout: float = 30):
    """`kubectl kubetune ARGS --kubeconfig=...` with kubectl resolving the plugin from PATH."""
    return subprocess.run(
        plugin_command(cluster, *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=plugin_env(cluster, env),
    )


def plugin_command(cluster: Cluster, *args: str) -> list[str]:
    assert (VENV_BIN / "kubectl-kubetune").exists(), "the package is not installed in this environment"
    return [cluster.kubectl_path, "kubetune", *args, f"--kubeconfig={cluster.kubeconfig}"]


def plugin_env(cluster: Cluster, extra: dict[str, str] | None = None) -> dict[str, str]:
    base = {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "KUBECTL": cluster.kubectl_path,
    }
    base.pop("KUBECONFIG", None)
    return {**base, **(extra or {})}


def cond(type_: str, status: str, reason: str, message: str = "") -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": T0}


def create_with_status(
    cluster: Cluster, example: str, name: str, status: dict[str, Any], namespace: str
) -> None:
    """Create the example under ``name``, then write its status as the operator would (the server
    ignores ``status`` on create: it is a subresource)."""
    doc = yaml.safe_load((ROOT / "examples" / "k8s" / example).read_text())
    doc["metadata"] = {"name": name, "namespace": namespace}
    created = cluster.create(doc, namespace)
    cluster.patch_status(created["kind"], namespace, name, status)


def create_ftj(cluster: Cluster, name: str, status: dict[str, Any], namespace: str | None = None) -> None:
    create_with_status(cluster, "finetunejob-support-intents.yaml", name, status, namespace or cluster.ns)


def create_adep(cluster: Cluster, name: str, status: dict[str, Any]) -> None:
    create_with_status(cluster, "adapterdeployment-support-intents.yaml", name, status, cluster.ns)


def create_pod(
    cluster: Cluster, job: str, name: str, component: str = "train", log: str | None = None
) -> None:
    """A pod labelled like the operator's, scheduled for real onto a kwok CPU node and run by kwok;
    ``log`` is what its trainer container printed."""
    labels = {"kubetune.dev/finetunejob": job, "app.kubernetes.io/component": component}
    cluster.create(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "containers": [{"name": "trainer", "image": "registry.example/trainer:1"}],
                "restartPolicy": "Never",
            },
        }
    )
    running = cluster.wait_running(cluster.ns, name, timeout=TIMEOUT)
    assert running["spec"]["nodeName"].startswith("kwok-cpu-"), running["spec"]["nodeName"]
    if log is not None:
        cluster.set_pod_log(cluster.ns, name, log, container="trainer")


def spec_of(cluster: Cluster, resource: str, name: str) -> dict[str, Any]:
    obj = cluster.get(resource, cluster.ns, name)
    assert obj is not None
    return obj["spec"]


@pytest.fixture
def other_namespace(cluster: Cluster) -> Iterator[str]:
    """A second namespace, beside the test's own (the kubeconfig's context does not point there)."""
    name = f"{cluster.ns}-other"
    cluster.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


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


def test_get_shows_progress_bars_accuracy_and_adapters(cluster: Cluster, other_namespace: str) -> None:
    create_ftj(cluster, "intents-a", RUNNING)
    create_ftj(cluster, "intents-b", SUCCEEDED)
    create_adep(cluster, "support-intents", ADEP_STATUS)
    create_ftj(cluster, "elsewhere", {"phase": "Pending"}, namespace=other_namespace)

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

    other = plugin(cluster, "-n", other_namespace, "get", "ftj")
    assert other.returncode == 0 and "elsewhere" in other.stdout and "intents-a" not in other.stdout

    every = plugin(cluster, "get", "ftj", "-A")
    assert every.stdout.splitlines()[0].startswith("NAMESPACE")
    rows = {tuple(line.split()[:2]) for line in every.stdout.splitlines()[1:]}
    assert {(other_namespace, "elsewhere"), (cluster.ns, "intents-a"), (cluster.ns, "intents-b")} <= rows


def test_errors_are_one_line_with_exit_codes(cluster: Cluster) -> None:
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


def test_watch_prints_a_line_per_change_and_exits_0_when_the_job_succeeds(cluster: Cluster) -> None:
    create_ftj(cluster, "intents", RUNNING)
    # The watch runs while the test, playing the operator, moves the status on each time the watch
    # has printed what it saw: one line per change, none for the unchanged polls in between.
    watch = subprocess.Popen(
        plugin_command(cluster, "watch", "intents", "--interval", "200ms", "--timeout", "60s"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=plugin_env(cluster),
    )
    assert watch.stdout is not None
    try:
        first = watch.stdout.readline()
        cluster.patch_status("ftj", cluster.ns, "intents", {"progress": "80/120", "loss": 0.3})
        second = watch.stdout.readline()
        cluster.patch_status("ftj", cluster.ns, "intents", SUCCEEDED)
        rest, stderr = watch.communicate(timeout=TIMEOUT)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    assert watch.returncode == 0, stderr
    assert "Running  [###-------] 40/120  loss 0.5123" in first
    assert "[######----] 80/120  loss 0.3000" in second
    last = rest.splitlines()
    assert len(last) == 1, rest
    assert "Succeeded  [##########] 120/120" in last[0] and "accuracy 0.9125" in last[0]


def test_watch_exits_1_on_failure_and_on_timeout(cluster: Cluster) -> None:
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


def test_logs_pretty_prints_the_newest_training_pod(cluster: Cluster) -> None:
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
    assert raw.returncode == 0, raw.stderr
    assert json.loads(raw.stdout)["step"] == 2


def test_logs_follow_streams_new_lines_until_interrupted(cluster: Cluster) -> None:
    create_ftj(cluster, "intents", RUNNING)
    create_pod(cluster, "intents", "intents-train-aaaaa", log=STEP_LOG + "\n")
    follow = subprocess.Popen(
        plugin_command(cluster, "logs", "intents", "-f"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=plugin_env(cluster),
        start_new_session=True,  # its own process group, so that the test can press Ctrl-C on it
        # Ctrl-C as in a terminal: a test run from a background job inherits SIGINT ignored, and then
        # only kubectl (which un-ignores it) would stop, the plugin never seeing the interruption.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert follow.stdout is not None
    watchdog = threading.Timer(TIMEOUT, follow.kill)  # a hung stream ends the reads below with EOF
    watchdog.start()
    try:
        seen = [follow.stdout.readline().rstrip("\n") for _ in range(4)]
        # The trainer prints another step while the user follows: it arrives through the stream. (kwok
        # may re-read the rewritten log file from its start, so earlier lines may come again first.)
        step3 = json.dumps({"event": "step", "step": 3, "totalSteps": 120, "loss": 1.5, "lr": 0.0002})
        cluster.set_pod_log(cluster.ns, "intents-train-aaaaa", f"{STEP_LOG}\n{step3}\n", container="trainer")
        later = iter(follow.stdout.readline, "")
        arrived = next((line.rstrip("\n") for line in later if line.startswith("step 3/")), None)
        assert arrived == "step 3/120  loss 1.5000  lr 2.00e-04", (
            f"the new line never came; before it: {seen}"
        )
        assert follow.poll() is None, "kubectl logs -f ended while the pod still runs"
        os.killpg(follow.pid, signal.SIGINT)
        _, stderr = follow.communicate(timeout=TIMEOUT)
    finally:
        watchdog.cancel()
        if follow.poll() is None:
            follow.kill()
            follow.wait()
    assert seen == [
        "Loading checkpoint shards: 100%",
        "== Training",
        "step 1/120  loss 2.0512  lr 2.00e-04",
        "step 2/120  loss 1.8391  lr 2.00e-04",
    ]
    assert follow.returncode == 130 and stderr == "", stderr  # Ctrl-C: the shell's 128 + SIGINT, no traceback


def test_logs_fall_back_to_the_validation_pod(cluster: Cluster) -> None:
    create_ftj(cluster, "fresh", {"phase": "ValidatingData"})
    none_yet = plugin(cluster, "logs", "fresh")
    assert none_yet.returncode == 1 and "no validation or training pod yet" in none_yet.stderr
    create_pod(cluster, "fresh", "fresh-validate-aaaaa", component="validate-data", log="checking rows\n")
    validating = plugin(cluster, "logs", "fresh")
    assert validating.returncode == 0, validating.stderr
    assert validating.stdout == "checking rows\n"


def test_suspend_and_resume_patch_spec_suspend(cluster: Cluster) -> None:
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


def test_rollback_and_promote_pin_spec_adapter_version(cluster: Cluster) -> None:
    create_adep(cluster, "support-intents", ADEP_STATUS)
    rolled = plugin(cluster, "rollback", "support-intents")
    assert rolled.returncode == 0, rolled.stderr
    assert "rolled back to v2 (was v3)" in rolled.stdout
    assert "serving pvc://kubetune-output/support-intents/v2 digest unrecorded" in rolled.stdout
    assert spec_of(cluster, "adep", "support-intents")["adapter"]["version"] == "v2"

    promoted = plugin(cluster, "promote", "support-intents", "--version", "v3")
    assert promoted.returncode == 0, promoted.stderr
    assert spec_of(cluster, "adep", "support-intents")["adapter"]["version"] == "v3"

    unknown = plugin(cluster, "promote", "support-intents", "--version", "v9")
    assert unknown.returncode == 1 and "known: v1, v2, v3" in unknown.stderr
    assert spec_of(cluster, "adep", "support-intents")["adapter"]["version"] == "v3"

    cleared = plugin(cluster, "promote", "support-intents", "--clear")
    assert cleared.returncode == 0, cleared.stderr
    adapter = spec_of(cluster, "adep", "support-intents")["adapter"]
    assert "version" not in adapter and adapter["fineTuneJobRef"] == {"name": "support-intents"}

    create_adep(cluster, "first", {**ADEP_STATUS, "activeAdapter": {"version": "v1"}, "history": HISTORY[:1]})
    nothing = plugin(cluster, "rollback", "first")
    assert nothing.returncode == 1 and "no version before v1" in nothing.stderr


def test_explain_failure_shows_condition_event_and_termination_reason(cluster: Cluster) -> None:
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
        "namespace": cluster.ns,
    }
    for name, obj, reason in (
        ("intents.1", involved, "BackoffLimitExceeded"),
        ("other.1", {**involved, "name": "other"}, "SomethingElse"),
    ):
        cluster.create(
            {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": name},
                "involvedObject": obj,
                "reason": reason,
                "message": f"Running -> Failed: {reason}",
                "type": "Warning",
                "count": 1,
                "firstTimestamp": T0,
                "lastTimestamp": T0,
                "source": {"component": "kubetune-operator"},
            }
        )
    report = {
        "reason": "evaluation gate: accuracy 0.6100 < minAccuracy 0.85",
        "metrics": {"after_accuracy": 0.61},
    }
    create_pod(cluster, "intents", "intents-train-aaaaa")
    cluster.finish_pod(cluster.ns, "intents-train-aaaaa", exit_code=4, message=json.dumps(report))

    result = plugin(cluster, "explain-failure", "intents")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith(f"FineTuneJob {cluster.ns}/intents: Failed")
    assert f"BackoffLimitExceeded   {message}" in out  # the Failed condition's row
    assert "Running -> Failed: BackoffLimitExceeded" in out and "SomethingElse" not in out
    assert "pod intents-train-aaaaa, exit code 4, Error" in out
    assert "reason:  evaluation gate: accuracy 0.6100 < minAccuracy 0.85" in out
    assert "after_accuracy=0.6100" in out

    create_ftj(cluster, "fine", RUNNING)
    fine = plugin(cluster, "explain-failure", "fine")
    assert fine.returncode == 0 and "has not failed (phase Running)" in fine.stdout


@pytest.mark.parametrize("where", ["before", "after"])
def test_context_flag_is_passed_to_kubectl(cluster: Cluster, where: str) -> None:
    create_ftj(cluster, "intents", RUNNING)
    args = ["--context", "no-such-context", "get", "ftj"]
    if where == "after":
        args = ["get", "ftj", "--context", "no-such-context"]
    result = plugin(cluster, *args)
    assert result.returncode == 1 and "no-such-context" in result.stderr
    assert plugin(cluster, "get", "ftj").returncode == 0  # the same call without the flag works
