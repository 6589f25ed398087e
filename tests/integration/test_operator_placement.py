"""Placement is a privilege (issue 22): the real operator, started with the chart's allow-lists, refuses
a FineTuneJob whose priority class is not on them and an AdapterDeployment that selects control-plane
nodes, with an InvalidSpec condition and a Warning event, and creates no pods for either."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from controlplane import Cluster
from ftj_helpers import INTENTS, ROOT, TIMEOUT, apply, wait_phase
from operator_process import Operator

ADAPTER = ROOT / "examples/k8s/adapterdeployment-support-intents.yaml"


@pytest.fixture
def strict_operator(cluster: Cluster, operator_kubeconfig: Path, tmp_path: Path) -> Iterator[Operator]:
    env = {
        "KUBETUNE_ALLOWED_PRIORITY_CLASSES": '["batch-low"]',
        "KUBETUNE_ALLOWED_TOLERATION_KEYS": '["nvidia.com/gpu"]',
    }
    op = Operator(operator_kubeconfig, cluster.ns, tmp_path / "operator.log", extra_env=env)
    op.start()
    yield op
    op.stop()
    assert "Traceback" not in op.logs(), op.logs()[-4000:]


def warning(cluster: Cluster, name: str, text: str) -> dict[str, Any]:
    return cluster.wait_for(
        lambda: next(
            (e for e in cluster.events(cluster.ns, name) if e["type"] == "Warning" and text in e["message"]),
            None,
        ),
        timeout=TIMEOUT,
        message=f"a Warning event about {name} saying {text!r}",
    )


def test_a_priority_class_off_the_allow_list_fails_the_job_without_pods(
    cluster: Cluster, strict_operator: Operator
) -> None:
    resources = yaml.safe_load(INTENTS.read_text())["spec"].get("resources", {})
    name = apply(cluster, INTENTS, resources={**resources, "priorityClassName": "batch-high"})

    obj = wait_phase(cluster, name, "Failed", strict_operator)

    text = "priorityClassName 'batch-high' is not on the operator's allowedPriorityClasses (batch-low)"
    spec_valid = next(c for c in obj["status"]["conditions"] if c["type"] == "SpecValid")
    assert (spec_valid["status"], spec_valid["reason"]) == ("False", "InvalidSpec")
    assert text in spec_valid["message"]
    warning(cluster, name, text)
    assert cluster.get("jobs.batch", cluster.ns, f"{name}-validate") is None


def test_a_control_plane_node_selector_degrades_the_deployment(
    cluster: Cluster, strict_operator: Operator
) -> None:
    doc = yaml.safe_load(ADAPTER.read_text())
    doc["spec"]["resources"] = {"nodeSelector": {"node-role.kubernetes.io/control-plane": ""}}
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))
    name = doc["metadata"]["name"]

    obj = cluster.wait_for(
        lambda: (
            (o := cluster.get("adep", cluster.ns, name))
            and o.get("status", {}).get("phase") == "Degraded"
            and o
        ),
        timeout=TIMEOUT,
        message=f"{name} Degraded",
    )

    ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert (
        "nodeSelector[node-role.kubernetes.io/control-plane] selects control-plane nodes" in ready["message"]
    )
    warning(cluster, name, "selects control-plane nodes")
    assert cluster.list("deployments.apps", cluster.ns) == []
