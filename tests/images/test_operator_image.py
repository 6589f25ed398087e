"""The operator image, run as the chart's Deployment runs it, reconciles a FineTuneJob.

The container is the one `helm template` renders (args, env, volumes), on the image's read-only root
as uid 65532, logged in as a pod is: a TokenRequest token of the chart's operator ServiceAccount and
the cluster CA at /var/run/secrets/kubernetes.io/serviceaccount, KUBERNETES_SERVICE_HOST/PORT.
"""

from __future__ import annotations

import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from controlplane import Cluster, ControlPlane
from controlplane.components import free_port
from image_runner import Image, Mount, plain_env, pod_mounts, start_container, stop

from tools import helm

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kubetune"
OPERATOR_NAMESPACE = "kubetune-system"  # where tests/conftest.py's operator_kubeconfig installs the RBAC
EXAMPLE = ROOT / "examples" / "k8s" / "finetunejob-support-intents.yaml"
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def chart_objects(*templates: str) -> list[dict[str, Any]]:
    args = [helm(), "template", "kubetune", str(CHART), "--namespace", OPERATOR_NAMESPACE]
    args += ["--set", "crds.install=false"]
    for template in templates:
        args += ["--show-only", f"templates/{template}"]
    rendered = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


def service_account_dir(plane: ControlPlane, path: Path) -> Path:
    """What the kubelet projects into a pod of the chart's operator ServiceAccount."""
    path.mkdir()
    token = plane.kubectl("create", "token", "kubetune", "-n", OPERATOR_NAMESPACE, "--duration=1h")
    (path / "token").write_text(token.stdout.strip())
    (path / "ca.crt").write_bytes(Path(plane.ca.cert).read_bytes())
    (path / "namespace").write_text(OPERATOR_NAMESPACE)
    path.chmod(0o755)
    for item in path.iterdir():
        item.chmod(0o644)
    return path


def healthz(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.mark.timeout(300)
def test_operator_image_reconciles_a_finetunejob_with_the_charts_service_account(
    control_plane: ControlPlane,
    cluster: Cluster,
    operator_kubeconfig: Path,  # installs the chart's ServiceAccounts + RBAC in kubetune-system
    operator_image: Image,
    tmp_path: Path,
) -> None:
    if not isinstance(control_plane, ControlPlane):
        pytest.skip("needs the local control plane (the container reaches it over host networking)")
    (deployment,) = chart_objects("deployment.yaml")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["serviceAccountName"] == "kubetune" and pod["automountServiceAccountToken"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # The chart's peering object (ClusterKopfPeering for --all-namespaces) and its CRD, as installed.
    control_plane.kubectl("apply", "--server-side", "-f", str(CHART / "crds" / "kopf-peerings.yaml"))
    existed = control_plane.kubectl("get", "clusterkopfpeering", "kubetune", check=False).returncode == 0
    control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(chart_objects("peering.yaml")))

    env = plain_env(container, {"metadata.name": "kubetune-operator-image-test"})
    # Host networking stands in for the pod's own network namespace: its ports move to free ones.
    liveness = free_port()
    env |= {
        "KUBETUNE_METRICS_PORT": str(free_port()),
        "KUBETUNE_LIVENESS_PORT": str(liveness),
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
        "KUBERNETES_SERVICE_PORT": str(control_plane.port),
    }
    mounts = pod_mounts(container, pod["volumes"], {})
    mounts.append(Mount(SA_DIR, service_account_dir(control_plane, tmp_path / "sa"), read_only=True))
    log_path = tmp_path / "operator.log"
    with log_path.open("wb") as log:
        proc = start_container(
            operator_image, command=container.get("command"), args=container.get("args"), env=env,
            mounts=mounts, stdout=log,
        )  # fmt: skip
    try:
        cluster.wait_for(lambda: healthz(liveness) or proc.poll() is not None, 120, 0.5, "operator /healthz")
        assert proc.poll() is None, log_path.read_text()[-4000:]

        cluster.create(yaml.safe_load(EXAMPLE.read_text()))

        def reconciled() -> dict[str, Any] | None:
            obj = cluster.get("finetunejobs", cluster.ns, "support-intents") or {}
            status = obj.get("status") or {}
            return obj if status.get("phase") and status.get("conditions") else None

        ftj = cluster.wait_for(reconciled, 90, 0.5, "a phase and conditions from the image's operator")
        job = cluster.wait_for(
            lambda: cluster.get("jobs", cluster.ns, "support-intents-validate"), 60, 0.5, "validation Job"
        )
        assert job["metadata"]["ownerReferences"][0]["uid"] == ftj["metadata"]["uid"]
        (trainer,) = job["spec"]["template"]["spec"]["containers"]
        assert trainer["image"] == env["KUBETUNE_TRAINER_IMAGE"]
        assert ftj["status"]["observedGeneration"] == ftj["metadata"]["generation"]
    finally:
        stop(proc)
        if not existed:
            control_plane.kubectl("delete", "clusterkopfpeering", "kubetune", check=False)
    logs = log_path.read_text()
    assert "Traceback" not in logs, logs[-4000:]
    assert " 403" not in logs and "Forbidden" not in logs, logs[-4000:]
