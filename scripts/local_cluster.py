"""`make cluster`: the tests' real control plane as a cluster of one's own, in the foreground.

What runs (all on this machine, the same modules the integration and e2e tests use):

- etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok with 3 fake CPU and 3 fake
  GPU nodes (tests/controlplane), built from Go modules by scripts/control-plane.sh;
- the chart, installed by the real helm (CRDs, RBAC, ServiceAccounts, settings) into namespace
  ``kubetune``; its operator Deployment is scaled to 0 (no image is pulled here) and the same
  operator runs as a local process with a token of the chart's ServiceAccount and the chart's
  settings (so the chart's RBAC is what it may do);
- the e2e tests' kubelet (tests/e2e/kubelet.py): every pod the real controllers make in namespace
  ``kubetune`` and the scheduler binds to a kwok node runs as a local process (its command, args, env,
  Secret refs), a PVC claim is a folder under ``<dir>/pvc/<claim>``, a server's probe and
  port-forward reach its local port, and how it ended is reported to the API as a kubelet would;
- a PersistentVolume waiting for each of the claims examples/k8s/pvcs.yaml makes.

State lives in ``<dir>`` (default .tools/cluster) and is thrown away on the next start. Ctrl-C, or
``make cluster-stop`` (SIGTERM to the pid in ``<dir>/pid``), stops everything.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "e2e")]

from controlplane import Cluster, ControlPlane  # noqa: E402
from kubelet import Kubelet  # noqa: E402
from operator_process import Operator  # noqa: E402

from tools import helm  # noqa: E402

NAMESPACE = "kubetune"
RELEASE = "kubetune"
CLAIMS = {"kubetune-data": "1Gi", "kubetune-output": "10Gi"}  # what examples/k8s/pvcs.yaml asks for
DEFAULT_DIR = ROOT / ".tools" / "cluster"


class Stop(Exception):
    """SIGTERM (make cluster-stop) or SIGINT (Ctrl-C): shut down in order."""


def _stop(signum: int, frame: FrameType | None) -> None:
    raise Stop(signal.Signals(signum).name)


def install_chart(plane: ControlPlane) -> None:
    """`helm install` the chart into NAMESPACE, then scale its operator Deployment to 0 and wait until
    its pods are gone (the operator runs as a local process instead; kwok would show them Running)."""
    subprocess.run(
        [helm(), "install", RELEASE, str(ROOT / "charts" / "kubetune"), "--namespace", NAMESPACE,
         "--create-namespace", "--kubeconfig", str(plane.admin_kubeconfig)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    plane.wait_established()
    plane.kubectl("-n", NAMESPACE, "scale", f"deployment/{RELEASE}", "--replicas=0")
    selector = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=operator"
    deadline = time.monotonic() + 60
    while plane.kubectl("-n", NAMESPACE, "get", "pods", "-l", selector, "-o", "name").stdout.strip():
        if time.monotonic() > deadline:
            raise TimeoutError("the chart's operator pods did not go after scaling to 0")
        time.sleep(0.5)


def chart_operator_env(view: Cluster) -> dict[str, str]:
    """The plain-value env of the chart's operator container (images, ServiceAccount, pull policy),
    with the metrics and liveness ports off: on this machine 8080/8081 may be taken."""
    deployment = view.get("deployments.apps", NAMESPACE, RELEASE)
    assert deployment is not None, f"the chart made no Deployment {RELEASE}"
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item["value"] for item in container.get("env", []) if "value" in item}
    return {**env, "KUBETUNE_METRICS_PORT": "0", "KUBETUNE_LIVENESS_PORT": "0"}


def provide_volumes(view: Cluster, pvc_root: Path) -> None:
    """One PersistentVolume per example claim, reserved for it (claimRef) and backed by the folder the
    kubelet mounts for that claim, as an administrator provisions volumes on a cluster without a
    StorageClass."""
    for claim, size in CLAIMS.items():
        folder = pvc_root / claim
        folder.mkdir(parents=True, exist_ok=True)
        view.create(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": f"{NAMESPACE}-{claim}"},
                "spec": {
                    "capacity": {"storage": size},
                    "accessModes": ["ReadWriteMany", "ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": "",
                    "hostPath": {"path": str(folder)},
                    "claimRef": {"namespace": NAMESPACE, "name": claim},
                },
            }
        )


def operator_kubeconfig(plane: ControlPlane, path: Path) -> Path:
    """A kubeconfig with a 24 h token of the chart's operator ServiceAccount (the chart's RBAC)."""
    token = plane.kubectl("create", "token", RELEASE, "-n", NAMESPACE, "--duration=24h").stdout.strip()
    return plane.token_kubeconfig(path, token, NAMESPACE)


def banner(kubeconfig: Path, state: Path, seconds: float) -> str:
    return f"""
kubetune local cluster is up ({seconds:.0f} s): namespace {NAMESPACE}, chart release {RELEASE}.
In another shell:

    export KUBECONFIG={kubeconfig}
    kubectl -n {NAMESPACE} get nodes,pods

Pods run as processes on this machine (CPU only, no images pulled); PVC kubetune-data is the folder
{state / "pvc" / "kubetune-data"}. Logs: {state / "plane" / "logs"}, {state / "operator.log"}.
Stop: Ctrl-C here, or `make cluster-stop`.
"""


def supervise(plane: ControlPlane, op: Operator, kubelet: Kubelet) -> None:
    """Until stopped: print what the kubelet reports failing; end when a component or the operator dies."""
    reported = 0
    while True:
        for error in kubelet.errors[reported:]:
            print(f"[kubelet] {error}", flush=True)
        reported = len(kubelet.errors)
        if failed := plane.failed_components():
            raise RuntimeError(f"control-plane components exited: {failed}\n{plane.diagnostics()}")
        if op.proc is None or op.proc.poll() is not None:
            raise RuntimeError(f"the operator exited:\n{op.logs()[-4000:]}")
        time.sleep(1)


def already_running(pid_file: Path) -> int | None:
    """The pid of a live cluster started from this folder, if any."""
    try:
        pid = int(pid_file.read_text())
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
        return None
    return pid


def run(state: Path) -> int:
    pid_file = state / "pid"
    if pid := already_running(pid_file):
        print(
            f"a cluster from {state} is running already (pid {pid}); `make cluster-stop` first",
            file=sys.stderr,
        )
        return 2
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    pid_file.write_text(str(os.getpid()))
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    started = time.monotonic()
    op: Operator | None = None
    kubelet: Kubelet | None = None
    try:
        with ControlPlane(state / "plane") as plane:
            try:
                install_chart(plane)
                view = Cluster(plane, NAMESPACE, state / "kubectl")
                provide_volumes(view, state / "pvc")
                op = Operator(
                    operator_kubeconfig(plane, state / "operator.kubeconfig"),
                    NAMESPACE,
                    state / "operator.log",
                    extra_env=chart_operator_env(view),
                )
                op.start()
                kubelet = Kubelet(view, state / "kubelet", state / "pvc").start()
                kubeconfig = plane.kubeconfig_for(state / "kubeconfig", NAMESPACE)
                print(banner(kubeconfig, state, time.monotonic() - started), flush=True)
                (state / "ready").write_text(
                    json.dumps({"kubeconfig": str(kubeconfig), "namespace": NAMESPACE})
                )
                supervise(plane, op, kubelet)
            finally:
                if kubelet is not None:
                    kubelet.stop()
                if op is not None:
                    op.stop()
    except Stop as why:
        print(f"stopped ({why})", flush=True)
    finally:
        for name in ("pid", "ready"):
            (state / name).unlink(missing_ok=True)
    return 0


def stop(state: Path, timeout: float = 120) -> int:
    """`make cluster-stop`: SIGTERM to the running cluster, then wait until it has shut down."""
    pid = already_running(state / "pid")
    if pid is None:
        print(f"no cluster running from {state}")
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while already_running(state / "pid") == pid:
        if time.monotonic() > deadline:
            print(f"pid {pid} still running after {timeout:.0f} s", file=sys.stderr)
            return 1
        time.sleep(0.5)
    print(f"stopped the cluster (pid {pid})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="state folder (default .tools/cluster)")
    parser.add_argument("--stop", action="store_true", help="stop the cluster running from --dir")
    args: Any = parser.parse_args(argv)
    state = args.dir.resolve()
    return stop(state) if args.stop else run(state)


if __name__ == "__main__":
    sys.exit(main())
