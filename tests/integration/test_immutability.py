"""A started FineTuneJob's spec is frozen at admission (CEL transition rule with oldSelf), except the
fields an operator or a GitOps tool may legitimately change: suspend, activeDeadlineSeconds,
maxPreemptions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from controlplane import Cluster

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "examples/k8s/finetunejob-support-intents.yaml"


def apply(cluster: Cluster, **spec: Any) -> Any:
    doc = yaml.safe_load(MANIFEST.read_text())
    for dotted, value in spec.items():
        node = doc["spec"]
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    return cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc), check=False)


def start(cluster: Cluster, phase: str = "Running") -> None:
    assert apply(cluster).returncode == 0
    cluster.patch_status(
        "ftj", cluster.ns, "support-intents", {"phase": phase, "startTime": "2026-11-22T10:00:00Z"}
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("lora.r", 32),
        ("training.learningRate", 0.01),
        ("dataset.train.uri", "pvc://kubetune-data/other.jsonl"),
        ("baseModel.name", "sentence-transformers/all-mpnet-base-v2"),
        ("backoffLimit", 7),
    ],
)
def test_spec_change_of_a_started_job_is_rejected(cluster: Cluster, field: str, value: Any) -> None:
    start(cluster)
    result = apply(cluster, **{field: value})
    assert result.returncode != 0
    assert "spec is immutable once the job has started" in result.stderr, result.stderr
    assert "only suspend, activeDeadlineSeconds, maxPreemptions may change" in result.stderr


def test_mutable_fields_of_a_started_job_go_through(cluster: Cluster) -> None:
    start(cluster)
    result = apply(cluster, suspend=True, activeDeadlineSeconds=7200, maxPreemptions=5)
    assert result.returncode == 0, result.stderr
    spec = cluster.get("ftj", cluster.ns, "support-intents")["spec"]
    assert (spec["suspend"], spec["activeDeadlineSeconds"], spec["maxPreemptions"]) == (True, 7200, 5)


def test_finished_jobs_are_frozen_too(cluster: Cluster) -> None:
    start(cluster, phase="Succeeded")
    assert "immutable" in apply(cluster, **{"lora.r": 8}).stderr


def test_a_pending_job_may_still_be_edited(cluster: Cluster) -> None:
    assert apply(cluster).returncode == 0
    cluster.patch_status("ftj", cluster.ns, "support-intents", {"phase": "Pending"})
    result = apply(cluster, **{"lora.r": 8})
    assert result.returncode == 0, result.stderr
    assert cluster.get("ftj", cluster.ns, "support-intents")["spec"]["lora"]["r"] == 8
