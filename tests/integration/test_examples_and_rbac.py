"""Every shipped manifest meets the real API server, and the chart's RBAC gives exactly what is needed.

- every manifest under examples/k8s/, examples/tour/ and examples/argocd/ is admitted (Argo CD's own
  CRDs are installed, so Applications meet their real schema too);
- the trainer's ServiceAccount can do nothing (`kubectl auth can-i --as`), the operator's can do
  what the operator does and nothing it doesn't (no Secrets, no pods/exec, no RBAC).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from controlplane import Cluster

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(ROOT.glob("examples/k8s/**/*.yaml")) + sorted(ROOT.glob("examples/tour/*.yaml"))
EXAMPLES += sorted(ROOT.glob("examples/argocd/**/*.yaml"))
OPERATOR_SA = "system:serviceaccount:kubetune-system:kubetune"


@pytest.mark.parametrize("path", EXAMPLES, ids=[str(p.relative_to(ROOT / "examples")) for p in EXAMPLES])
def test_every_example_is_admitted(cluster: Cluster, path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        namespace = doc["metadata"].get("namespace")
        if namespace and cluster.get("namespaces", None, namespace) is None:
            cluster.kubectl("create", "namespace", namespace, check=False)  # e.g. argocd
    result = cluster.kubectl("apply", "--dry-run=server", "-f", str(path), check=False)
    assert result.returncode == 0, result.stderr
    assert "(server dry run)" in result.stdout


def can_i(cluster: Cluster, user: str, verb: str, resource: str, namespace: str) -> bool:
    result = cluster.kubectl("auth", "can-i", verb, resource, "-n", namespace, f"--as={user}", check=False)
    return result.stdout.strip() == "yes"


TRAINER_PROBES = [
    ("get", "pods"),
    ("list", "secrets"),
    ("get", "configmaps"),
    ("create", "jobs.batch"),
    ("get", "finetunejobs.kubetune.dev"),
    ("patch", "finetunejobs.kubetune.dev/status"),
    ("create", "events"),
    ("list", "namespaces"),
    ("create", "pods/exec"),
]


def test_trainer_service_account_can_do_nothing(cluster: Cluster, operator_kubeconfig: Path) -> None:
    """The chart (and the operator, which creates it per namespace) binds nothing to it."""
    trainer = f"system:serviceaccount:{cluster.ns}:kubetune-trainer"
    allowed = [probe for probe in TRAINER_PROBES if can_i(cluster, trainer, *probe, cluster.ns)]
    assert allowed == []


@pytest.mark.parametrize(
    ("verb", "resource", "expected"),
    [
        ("create", "jobs.batch", True),
        ("delete", "jobs.batch", True),
        ("patch", "finetunejobs.kubetune.dev/status", True),
        ("patch", "adapterdeployments.kubetune.dev/status", True),
        ("create", "deployments.apps", True),
        ("create", "horizontalpodautoscalers.autoscaling", True),
        ("get", "pods/log", True),
        ("create", "events", True),
        ("get", "secrets", False),
        ("list", "secrets", False),
        ("create", "pods", False),
        ("create", "pods/exec", False),
        ("delete", "finetunejobs.kubetune.dev", False),
        ("create", "rolebindings.rbac.authorization.k8s.io", False),
        ("patch", "customresourcedefinitions.apiextensions.k8s.io", False),
        ("delete", "namespaces", False),
    ],
)
def test_operator_service_account_has_exactly_what_it_needs(
    cluster: Cluster, operator_kubeconfig: Path, verb: str, resource: str, expected: bool
) -> None:
    assert can_i(cluster, OPERATOR_SA, verb, resource, cluster.ns) is expected
