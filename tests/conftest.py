"""Session fixtures shared by tests/integration and tests/e2e: the real control plane.

``control_plane`` (session) builds the binaries if needed (scripts/control-plane.sh), starts etcd,
kube-apiserver, kube-controller-manager, kube-scheduler and kwok with fake CPU and GPU nodes, and
installs the CRDs from crds/. ``cluster`` gives each test its own namespace and kubeconfig.
``operator_kubeconfig`` is a token of the chart's operator ServiceAccount, bound by the chart's own
RBAC; ``operator`` runs the real operator with it in the test's namespace.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from controlplane import Cluster, ControlPlane
from controlplane.chart_rbac import operator_token
from controlplane.external import ExternalCluster
from operator_process import Operator

ROOT = Path(__file__).resolve().parents[1]
OPERATOR_NAMESPACE = "kubetune-system"


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane | ExternalCluster]:
    """Our own control plane, or the cluster KUBETUNE_TEST_KUBECONFIG names (`make test-cluster`)."""
    external = os.environ.get("KUBETUNE_TEST_KUBECONFIG")
    workdir = tmp_path_factory.mktemp("control-plane")
    with ExternalCluster(Path(external), workdir) if external else ControlPlane(workdir) as plane:
        plane.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
        # Argo CD's Application CRD, so that examples/argocd meets a real schema (no Argo CD runs).
        plane.kubectl("apply", "--server-side", "-f", str(plane.bin / "argocd-crds"))
        plane.wait_established()
        yield plane
        failed = plane.failed_components()
        assert not failed, f"control-plane components died: {failed}\n{plane.diagnostics()}"


def _namespace_for(nodeid: str) -> str:
    name = re.sub(r"[^a-z0-9]+", "-", nodeid.split("::")[-1].lower()).strip("-")[:40].strip("-")
    return f"{name}-{hashlib.sha1(nodeid.encode()).hexdigest()[:6]}"


@pytest.fixture
def cluster(
    control_plane: ControlPlane | ExternalCluster, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Cluster]:
    """The real cluster, seen from a fresh namespace of this test's own (the kubeconfig's default)."""
    namespace = _namespace_for(request.node.nodeid)
    control_plane.kubectl("create", "namespace", namespace)
    view = Cluster(control_plane, namespace, tmp_path / "cluster")
    yield view
    if request.node.stash.get(_FAILED, False):
        print(control_plane.diagnostics())
    control_plane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    if report.failed:
        item.stash[_FAILED] = True
    return report


@pytest.fixture(scope="session")
def operator_kubeconfig(
    control_plane: ControlPlane | ExternalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A kubeconfig holding a token (TokenRequest API) of the chart's operator ServiceAccount, whose
    rights are exactly the chart's ClusterRole (cluster mode: no watchNamespaces)."""
    token = operator_token(control_plane, ROOT / "charts" / "kubetune", OPERATOR_NAMESPACE)
    return control_plane.token_kubeconfig(
        tmp_path_factory.mktemp("operator") / "kubeconfig", token, OPERATOR_NAMESPACE
    )


@pytest.fixture
def operator(cluster: Cluster, operator_kubeconfig: Path, tmp_path: Path) -> Iterator[Operator]:
    """The real `kubetune operator` in the test's namespace, with the chart's RBAC; its log must show
    no traceback and no 403."""
    op = Operator(operator_kubeconfig, cluster.ns, tmp_path / "operator.log")
    op.start()
    yield op
    op.stop()
    logs = op.logs()
    assert "Traceback" not in logs, logs[-4000:]
    assert " 403" not in logs and "Forbidden" not in logs, logs[-4000:]
