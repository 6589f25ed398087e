"""The pure builders produce exactly the Job/ConfigMap/Service a platform engineer expects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubetune_operator.builders.meta import child_name
from kubetune_operator.builders.training import (
    build_config_map,
    build_rendezvous_service,
    build_training_job,
    build_validate_job,
)

from kubetune.api import uris
from kubetune.api.finetunejob import FineTuneJob
from kubetune.api.trainconfig import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
K8S_VERSION = "1.30.0"


def load_example(name: str, **spec_overrides: Any) -> tuple[FineTuneJob, dict[str, Any]]:
    doc = yaml.safe_load((ROOT / "examples" / "k8s" / name).read_text())
    doc["metadata"].update(namespace="ml", uid="0000-1111", generation=1)
    for dotted, value in spec_overrides.items():
        node = doc["spec"]
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return FineTuneJob.model_validate(doc), doc


def build_all(cr: FineTuneJob, owner: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        "config": build_config_map(cr, owner),
        "validate": build_validate_job(cr, owner, "img:1", "IfNotPresent", "kubetune-trainer", "500m", "2Gi"),
        "train": build_training_job(cr, owner, "img:1", "IfNotPresent", "kubetune-trainer"),
        "rdzv": build_rendezvous_service(cr, owner),
    }


@pytest.mark.parametrize("example", ["finetunejob-support-intents.yaml", "finetunejob-support-triage.yaml"])
def test_every_built_manifest_passes_the_kubernetes_schema(example: str) -> None:
    cr, owner = load_example(example, **{"resources.nodes": 2})
    for obj in build_all(cr, owner).values():
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_training_job_shape() -> None:
    cr, owner = load_example("finetunejob-support-triage.yaml")
    job = build_training_job(cr, owner, "img:1", "IfNotPresent", "kubetune-trainer")
    assert job["metadata"]["name"] == "support-triage-train"
    assert job["metadata"]["ownerReferences"][0] == {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "name": "support-triage",
        "uid": "0000-1111",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-ml"
    assert job["spec"]["suspend"] is True  # queued: Kueue un-suspends on admission
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["args"] == ["train", "-f", "/etc/kubetune/train-config.yaml", "--log-format", "json"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == "kubetune-trainer"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] == {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    }
    assert rules[1]["action"] == "FailJob"
    claims = {
        v["persistentVolumeClaim"]["claimName"]: v["persistentVolumeClaim"]["readOnly"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {"kubetune-data": True, "kubetune-output": False}


def test_validate_job_requests_no_gpu() -> None:
    cr, owner = load_example("finetunejob-support-intents.yaml")
    job = build_validate_job(cr, owner, "img:1", "IfNotPresent", "sa", "500m", "2Gi")
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in str(container["resources"])
    assert container["args"][0] == "validate-data"
    assert "tolerations" not in job["spec"]["template"]["spec"]


def test_config_map_holds_the_train_config_the_trainer_reads() -> None:
    cr, owner = load_example("finetunejob-support-intents.yaml")
    cm = build_config_map(cr, owner)
    config = TrainConfig.model_validate(yaml.safe_load(cm["data"]["train-config.yaml"]))
    assert (
        config.locate(config.dataset.train.uri)
        == "/mnt/kubetune/pvc/kubetune-data/support-intents/train.jsonl"
    )
    assert config.locate(config.output_uri) == "/mnt/kubetune/pvc/kubetune-output/support-intents"
    assert config.lora == cr.spec.lora


def test_secrets_travel_only_by_reference() -> None:
    cr, owner = load_example(
        "finetunejob-support-intents.yaml",
        **{
            "baseModel.tokenSecretRef": {"name": "hf", "key": "token"},
            "output.uri": "s3://adapters/intents",
            "output.secretRef": {"name": "s3-creds"},
        },
    )
    objs = build_all(cr, owner)
    container = objs["train"]["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}} in container[
        "env"
    ]
    assert container["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    assert all("value" not in e for e in container["env"] if e["name"] == "HF_TOKEN")
    # The ConfigMap names the Secret (so the trainer knows the source needs credentials), never a value.
    assert "HF_TOKEN" not in objs["config"]["data"]["train-config.yaml"]


def test_multi_node_uses_indexed_job_and_torchrun_rendezvous() -> None:
    cr, owner = load_example(
        "finetunejob-support-triage.yaml", **{"resources.nodes": 4, "resources.gpusPerNode": 8}
    )
    objs = build_all(cr, owner)
    job = objs["train"]
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 4
    pod = job["spec"]["template"]["spec"]
    assert pod["subdomain"] == "support-triage-rdzv" == objs["rdzv"]["metadata"]["name"]
    container = pod["containers"][0]
    assert container["command"] == ["kubetune"]
    assert container["args"][:3] == ["launch", "--", "torchrun"]
    assert "--nnodes=4" in container["args"] and "--nproc-per-node=8" in container["args"]
    assert "--node-rank=$(JOB_COMPLETION_INDEX)" in container["args"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MASTER_ADDR"] == "support-triage-train-0.support-triage-rdzv"
    assert objs["rdzv"]["spec"]["clusterIP"] == "None"


def test_child_names_are_deterministic_and_bounded() -> None:
    long = "a" * 80
    assert child_name(long, "train") == child_name(long, "train")
    assert len(child_name(long, "train")) <= 63
    assert child_name(long, "train") != child_name("a" * 81, "train")
    assert child_name("x", "train") == "x-train"


def test_the_charts_allowed_hosts_reach_both_trainer_pods_only_when_set() -> None:
    cr, owner = load_example("finetunejob-support-intents.yaml")

    def env(job: dict[str, Any]) -> dict[str, str]:
        (container,) = job["spec"]["template"]["spec"]["containers"]
        return {e["name"]: e.get("value", "") for e in container["env"]}

    allowed = ["*.corp.example", "10.20.0.0/16"]
    train = build_training_job(cr, owner, "img:1", "IfNotPresent", "sa", allowed_hosts=allowed)
    validate = build_validate_job(cr, owner, "img:1", "IfNotPresent", "sa", "1", "1Gi", allowed_hosts=allowed)

    assert env(train)["KUBETUNE_ALLOWED_HOSTS"] == env(validate)["KUBETUNE_ALLOWED_HOSTS"]
    assert uris.allowed_hosts_from(env(train)) == tuple(allowed)
    assert "KUBETUNE_ALLOWED_HOSTS" not in env(build_training_job(cr, owner, "img:1", "IfNotPresent", "sa"))
