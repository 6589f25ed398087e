"""`helm uninstall`, then install again into another namespace; a failed `helm test` leaves nothing.

Real helm on a control plane of its own (the CRDs are cluster-wide). What survives an uninstall is
looked up across every listable kind, not assumed: only the two kubetune CRDs (`resource-policy:
keep`) and the Argo CD ConfigMap (kept too), still annotated with the old release's namespace, so
Helm refuses a plain install elsewhere and `--take-ownership` (the chart README's documented path)
adopts them.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from controlplane import Cluster, ControlPlane
from test_chart_install import CHART, FINETUNEJOB, IMAGES, get, helm_env, run_helm

from tools import helm

RELEASE, FIRST, SECOND, TEAM = "kubetune", "kubetune-first", "kubetune-second", "team-a"
KUBETUNE_CRDS = ("finetunejobs.kubetune.dev", "adapterdeployments.kubetune.dev")
TEST_POD = f"{RELEASE}-test-operator-answers"


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with ControlPlane(tmp_path_factory.mktemp("reinstall-plane"), cpu_nodes=1, gpu_nodes=0) as fresh:
        yield fresh


def release_objects(plane: ControlPlane) -> list[str]:
    """kind/name (namespace) of every object, of any listable kind, that names the release in its
    label or in Helm's ownership annotation (the Argo CD ConfigMap has only the latter)."""
    kinds = plane.kubectl("api-resources", "--verbs=list", "-o", "name").stdout.split()
    listed = json.loads(plane.kubectl("get", ",".join(kinds), "-A", "-o", "json").stdout)["items"]
    return sorted(
        f"{o['kind']}/{o['metadata']['name']}"
        + (f" ({o['metadata']['namespace']})" if "namespace" in o["metadata"] else "")
        for o in listed
        if (o["metadata"].get("labels") or {}).get("app.kubernetes.io/instance") == RELEASE
        or (o["metadata"].get("annotations") or {}).get("meta.helm.sh/release-name") == RELEASE
    )


KEPT = sorted([*(f"CustomResourceDefinition/{crd}" for crd in KUBETUNE_CRDS), "ConfigMap/argocd-cm (argocd)"])
# The switches whose objects are not the operator's: both render, one of them is kept.
EXTRAS = ("--set", "argocd.enabled=true", "--set", "grafanaDashboard.enabled=true")


def owners(plane: ControlPlane) -> set[str]:
    """The release namespace each kept object names."""
    kept = [get(plane, "crd", crd) for crd in KUBETUNE_CRDS] + [get(plane, "cm", "argocd-cm", "-n", "argocd")]
    return {o["metadata"]["annotations"]["meta.helm.sh/release-namespace"] for o in kept}


def test_reinstall_into_another_namespace_adopts_the_kept_crds(plane: ControlPlane) -> None:
    plane.kubectl("create", "namespace", "argocd")
    run_helm(plane, "install", RELEASE, str(CHART), "-n", FIRST, "--create-namespace", *IMAGES, *EXTRAS)
    assert "ConfigMap/kubetune-dashboard (kubetune-first)" in release_objects(plane)
    plane.kubectl("create", "namespace", TEAM)
    plane.kubectl("apply", "-n", TEAM, "-f", str(FINETUNEJOB))
    stored = get(plane, "ftj", "support-intents", "-n", TEAM)
    run_helm(plane, "uninstall", RELEASE, "-n", FIRST, "--wait", "--timeout", "120s")

    assert release_objects(plane) == KEPT
    assert owners(plane) == {FIRST}

    plain = subprocess.run(
        [helm(), "install", RELEASE, str(CHART), "-n", SECOND, "--create-namespace", *IMAGES, *EXTRAS],
        capture_output=True,
        text=True,
        timeout=300,
        env=helm_env(plane),
    )
    assert plain.returncode != 0
    assert "invalid ownership metadata" in plain.stderr, plain.stderr
    assert (
        f'"meta.helm.sh/release-namespace" must equal "{SECOND}": current value is "{FIRST}"' in plain.stderr
    )

    # Helm checks ownership before it records a release: nothing to clean up before the retry.
    run_helm(
        plane,
        "install",
        RELEASE,
        str(CHART),
        "-n",
        SECOND,
        "--create-namespace",
        "--take-ownership",
        *IMAGES,
        *EXTRAS,
    )
    assert owners(plane) == {SECOND}
    # An ordinary upgrade now owns them; the FineTuneJob lived through all of it.
    run_helm(
        plane, "upgrade", RELEASE, str(CHART), "-n", SECOND, *IMAGES, *EXTRAS, "--set", "operator.replicas=1"
    )
    assert get(plane, "ftj", "support-intents", "-n", TEAM)["metadata"]["uid"] == stored["metadata"]["uid"]


def test_a_failed_helm_test_pod_is_gone_and_its_log_was_shown(plane: ControlPlane, tmp_path: Path) -> None:
    """Runs after the reinstall (release in SECOND)."""
    view = Cluster(plane, SECOND, tmp_path / "view")
    proc = subprocess.Popen(
        [helm(), "test", RELEASE, "-n", SECOND, "--timeout", "120s"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=helm_env(plane),
    )
    try:
        view.wait_running(SECOND, TEST_POD, timeout=60)
        view.set_pod_log(SECOND, TEST_POD, "operator did not answer on http://kubetune-metrics:8080/metrics")
        view.finish_pod(SECOND, TEST_POD, exit_code=1)
        output = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, output
    assert "operator did not answer on http://kubetune-metrics:8080/metrics" in output, output
    view.wait_for(lambda: view.get("pods", SECOND, TEST_POD) is None, timeout=30, message="test pod deleted")

    run_helm(plane, "uninstall", RELEASE, "-n", SECOND, "--wait", "--timeout", "120s")
    deadline = time.monotonic() + 30
    while (left := release_objects(plane)) != KEPT:
        assert time.monotonic() < deadline, left
        time.sleep(0.5)
