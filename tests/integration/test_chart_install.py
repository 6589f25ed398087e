"""`helm install`, `helm upgrade` from the previous chart version and `helm uninstall` against a real
control plane of their own (CRDs are cluster-wide, so this module does not share the session's).

What a platform engineer's first day looks like: the CRDs are established, the RBAC exists, the
operator Deployment's pods are scheduled (on kwok nodes) and available; an upgrade updates the CRD
schemas in place with FineTuneJobs stored; an uninstall removes the operator and keeps the CRDs and
every FineTuneJob (`helm.sh/resource-policy: keep`).
"""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from controlplane import Cluster, ControlPlane
from controlplane.expect import differences

from tools import helm

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kubetune"
RELEASE, NAMESPACE, TEAM = "kubetune", "kubetune", "team-a"
FINETUNEJOB = ROOT / "examples" / "k8s" / "finetunejob-support-intents.yaml"
IMAGES = [
    "--set",
    "operator.image.repository=registry.example/kubetune-operator",
    "--set",
    "trainer.image.repository=registry.example/kubetune-trainer",
]


def previous_chart(workdir: Path) -> tuple[str, Path]:
    """The chart as of the newest commit whose Chart.yaml names another version than the current one."""
    current = yaml.safe_load((CHART / "Chart.yaml").read_text())["version"]
    commits = subprocess.run(
        ["git", "log", "--format=%H", "--", "charts/kubetune/Chart.yaml"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    for commit in commits:
        shown = subprocess.run(
            ["git", "show", f"{commit}:charts/kubetune/Chart.yaml"], cwd=ROOT, capture_output=True, text=True
        )
        if shown.returncode == 0 and (version := yaml.safe_load(shown.stdout)["version"]) != current:
            archive = workdir / "previous.tar"
            subprocess.run(
                ["git", "archive", "--output", str(archive), commit, "charts/kubetune"], cwd=ROOT, check=True
            )
            with tarfile.open(archive) as tar:
                tar.extractall(workdir, filter="data")
            return version, workdir / "charts" / "kubetune"
    raise AssertionError(f"no earlier chart version than {current} in git history (a shallow clone?)")


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with ControlPlane(tmp_path_factory.mktemp("helm-plane"), cpu_nodes=2, gpu_nodes=1) as fresh:
        yield fresh


def helm_env(plane: ControlPlane) -> dict[str, str]:
    return {
        **os.environ,
        "KUBECONFIG": str(plane.admin_kubeconfig),
        "HELM_CACHE_HOME": str(plane.workdir / "helm"),
    }


def run_helm(plane: ControlPlane, *args: str) -> str:
    result = subprocess.run(
        [helm(), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=helm_env(plane),
    )
    assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def helm_while_probing(plane: ControlPlane, workdir: Path, *args: str) -> str:
    """Run helm (with --wait) while playing the kubelet's readiness prober for the operator pods:
    kwok runs no container, so a pod with a readinessProbe turns Ready only when the test says so,
    and a rolling update replaces one pod after the other as each new one becomes Ready."""
    view = Cluster(plane, NAMESPACE, workdir)
    proc = subprocess.Popen(
        [helm(), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=helm_env(plane)
    )
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        for pod in view.list("pods", NAMESPACE, label_selector="app.kubernetes.io/component=operator"):
            status = pod.get("status", {})
            ready = any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", []))
            if (
                status.get("phase") == "Running"
                and not ready
                and not pod["metadata"].get("deletionTimestamp")
            ):
                view.set_pod_ready(NAMESPACE, pod["metadata"]["name"])
        time.sleep(0.5)
    if proc.poll() is None:
        proc.kill()
    output = proc.communicate()[0]
    assert proc.returncode == 0, f"helm {' '.join(args)}:\n{output}"
    return output


def get(plane: ControlPlane, *args: str) -> Any:
    return json.loads(plane.kubectl("get", *args, "-o", "json").stdout)


def stored_schema(plane: ControlPlane, crd: str) -> Any:
    return get(plane, "crd", crd)["spec"]["versions"][0]["schema"]


def test_install_upgrade_uninstall_keep_the_finetunejobs(plane: ControlPlane, tmp_path: Path) -> None:
    old_version, old_chart = previous_chart(tmp_path)
    # Charts since 0.3.0 give the operator a readiness probe: --wait needs the prober played.
    helm_while_probing(
        plane,
        tmp_path / "install-view",
        "install",
        RELEASE,
        str(old_chart),
        "-n",
        NAMESPACE,
        "--create-namespace",
        "--wait",
        "--timeout",
        "180s",
        *IMAGES,
    )

    for crd in (
        "finetunejobs.kubetune.dev",
        "adapterdeployments.kubetune.dev",
        "clusterkopfpeerings.kopf.dev",
    ):
        conditions = {c["type"]: c["status"] for c in get(plane, "crd", crd)["status"]["conditions"]}
        assert conditions["Established"] == "True", (crd, conditions)
    assert get(plane, "clusterrole", RELEASE)["rules"]
    assert get(plane, "clusterrolebinding", RELEASE)["subjects"][0]["name"] == RELEASE
    deployment = get(plane, "deployment", RELEASE, "-n", NAMESPACE)
    assert deployment["metadata"]["labels"]["helm.sh/chart"] == f"kubetune-{old_version}"
    assert deployment["status"]["availableReplicas"] == deployment["spec"]["replicas"] == 2
    pods = get(plane, "pods", "-n", NAMESPACE, "-l", "app.kubernetes.io/component=operator")["items"]
    assert len(pods) == 2 and all(p["spec"]["nodeName"].startswith("kwok-cpu-") for p in pods), pods

    plane.kubectl("create", "namespace", TEAM)
    plane.kubectl("apply", "-n", TEAM, "-f", str(FINETUNEJOB))
    stored = get(plane, "ftj", "support-intents", "-n", TEAM)

    new_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["version"]
    helm_while_probing(
        plane,
        tmp_path / "view",
        "upgrade",
        RELEASE,
        str(CHART),
        "-n",
        NAMESPACE,
        "--wait",
        "--timeout",
        "180s",
        *IMAGES,
    )
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        # The chart's CRDs are templates: the upgrade replaced the schemas with the current ones.
        assert stored_schema(plane, crd["metadata"]["name"]) == crd["spec"]["versions"][0]["schema"], (
            path.name
        )
    deployment = get(plane, "deployment", RELEASE, "-n", NAMESPACE)
    assert deployment["metadata"]["labels"]["helm.sh/chart"] == f"kubetune-{new_version}"
    upgraded = get(plane, "ftj", "support-intents", "-n", TEAM)
    assert upgraded["metadata"]["uid"] == stored["metadata"]["uid"]
    # Every stored value survives; fields new in this chart's CRDs appear with their defaults
    # (the API server defaults on read).
    assert differences(stored["spec"], upgraded["spec"]) == []
    assert_keda_refused_without_keda(plane)

    run_helm(plane, "uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout", "120s")
    assert plane.kubectl("get", "deployment", RELEASE, "-n", NAMESPACE, check=False).returncode != 0
    assert plane.kubectl("get", "clusterrole", RELEASE, check=False).returncode != 0
    for crd in ("finetunejobs.kubetune.dev", "adapterdeployments.kubetune.dev"):
        assert get(plane, "crd", crd)["metadata"]["name"] == crd  # kept
    kept = get(plane, "ftj", "support-intents", "-n", TEAM)
    assert kept["metadata"]["uid"] == stored["metadata"]["uid"]


def assert_keda_refused_without_keda(plane: ControlPlane) -> None:
    """No KEDA on this control plane: the chart's ValidatingAdmissionPolicy makes the API server refuse an
    AdapterDeployment that asks for a KEDA ScaledObject, with its message; an HPA one is admitted."""
    adep = yaml.safe_load((ROOT / "examples/k8s/adapterdeployment-support-intents.yaml").read_text())
    adep["spec"]["monitoring"] = {"prometheusUrl": "https://prometheus.example.com"}
    adep["spec"]["autoscaling"] = {"maxReplicas": 4, "keda": True}
    deadline = time.monotonic() + 30  # the API server picks a new policy up within about a second
    while True:
        result = plane.kubectl(
            "apply", "-n", TEAM, "--dry-run=server", "-f", "-", input=yaml.safe_dump(adep), check=False
        )
        if result.returncode != 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert result.returncode != 0, result.stdout
    assert "spec.autoscaling.keda: KEDA is not installed in this cluster" in result.stderr, result.stderr
    adep["spec"]["autoscaling"]["keda"] = False
    plane.kubectl("apply", "-n", TEAM, "--dry-run=server", "-f", "-", input=yaml.safe_dump(adep))
