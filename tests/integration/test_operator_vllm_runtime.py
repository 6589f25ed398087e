"""`runtime.engine: vllm` on the real control plane (issue 24, item 1): the operator renders one pod
with vLLM (loopback, runtime LoRA loading, the GPU) and the kubetune container fronting it (the
Service's target), admitted under Pod Security "restricted"; an adapter whose LoRA rank is above
runtime.maxLoraRank is refused when its FineTuneJob is resolved, with a condition and an event.

A new adapter version reaches the running pods through their ServeConfig ConfigMap only: the
Deployment's pod template, generation and ReplicaSet stay as they are (vLLM is not restarted), and
the version is Available once the pods' kubetune container logs that it serves it (the operator reads
the pod log; this test writes it, as it plays the readiness prober). With engine kubetune a new
version still rolls the pods: test_operator_adapterdeployment.py's rollout."""

from __future__ import annotations

from typing import Any

import yaml
from adep_helpers import (
    ADEP,
    STABLE,
    active_version,
    ready_pods,
    run_adapter_uri,
    succeeded_finetunejob,
    wait_adep,
    wait_deployment,
)
from controlplane import Cluster
from ftj_helpers import ROOT, TIMEOUT, bind_claims
from kubetune_trainer.serve.served_report import serving_line
from operator_process import SERVER_IMAGE, Operator

TRIAGE = ROOT / "examples/k8s/finetunejob-support-triage.yaml"
DIGEST = "sha256:" + "cc" * 32
DIGEST_B = "sha256:" + "dd" * 32
VERSION, VERSION_B = "support-triage-cccccccc", "support-triage-dddddddd"
# vLLM runs LoRA only: the example's answer heads would be refused (a test of its own below).
JOB = {
    "training": {**yaml.safe_load(TRIAGE.read_text())["spec"]["training"], "recipe": "lora"},
    "resources": {"memory": "4Gi"},  # no queue here; the example's waits for Kueue's admission
}


def vllm_deployment(**runtime: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "AdapterDeployment",
        "metadata": {"name": ADEP},
        "spec": {
            "baseModel": {"name": "HuggingFaceTB/SmolLM2-135M-Instruct"},
            "task": "causal-lm",
            "adapter": {"fineTuneJobRef": {"name": "support-triage"}},
            "replicas": 1,
            "resources": {"gpus": 1, "memory": "16Gi"},
            "runtime": {"engine": "vllm", "maxLoras": 2, "maxLoraRank": 16, **runtime},
        },
    }


def test_vllm_runtime_renders_vllm_beside_the_kubetune_front(cluster: Cluster, operator: Operator) -> None:
    bind_claims(cluster)
    succeeded_finetunejob(cluster, DIGEST, manifest=TRIAGE, **JOB)
    cluster.kubectl("label", "namespace", cluster.ns, "pod-security.kubernetes.io/enforce=restricted")
    manifest = vllm_deployment(args=["--gpu-memory-utilization=0.85"])
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))

    pod = wait_deployment(cluster)["spec"]["template"]["spec"]
    vllm, front = pod["containers"]
    assert vllm["name"] == "vllm" and vllm["command"] == ["vllm"]
    assert vllm["args"] == [
        "serve",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "--host",
        "127.0.0.1",
        "--port",
        "8001",
        "--enable-lora",
        "--max-loras",
        "2",
        "--max-lora-rank",
        "16",
        "--gpu-memory-utilization=0.85",
    ]
    env = {e["name"]: e.get("value") for e in vllm["env"]}
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in front.get("resources", {}).get("limits", {})
    assert "/health" in " ".join(vllm["startupProbe"]["exec"]["command"])
    assert "/health" in " ".join(vllm["readinessProbe"]["exec"]["command"])
    output_mount = next(m for m in front["volumeMounts"] if m["name"].startswith("pvc-"))
    assert {**output_mount, "readOnly": True} in vllm["volumeMounts"]  # lora_path resolves in vLLM too
    assert vllm["securityContext"]["runAsNonRoot"] and not vllm["securityContext"]["allowPrivilegeEscalation"]

    assert front["image"] == SERVER_IMAGE and front["readinessProbe"]["httpGet"]["path"] == "/readyz"
    service = cluster.get("services", cluster.ns, ADEP)
    assert service is not None
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= {"http", front["ports"][0]["containerPort"]}
    config_map = cluster.get("configmaps", cluster.ns, f"{ADEP}-serve-config")
    assert config_map is not None
    config = yaml.safe_load(config_map["data"]["serve-config.yaml"])
    assert config["engine"] == {
        "url": "http://127.0.0.1:8001",
        "syncIntervalS": 2.0,
        "timeoutS": 600.0,
        "configFile": "/etc/kubetune/serve-config.yaml",
    }
    assert [a["name"] for a in config["adapters"]] == [ADEP]

    # The real ReplicaSet controller created the pod in a namespace enforcing "restricted", on a GPU node.
    (running,) = ready_pods(cluster, STABLE, 1)
    assert running["spec"]["nodeName"].startswith("kwok-gpu-")
    log_serving(cluster, running, VERSION)
    live = wait_adep(cluster, operator, lambda s: s.get("phase") == "Available", "Available")
    assert live["activeAdapter"]["digest"] == DIGEST


def log_serving(cluster: Cluster, pod: dict[str, Any], *versions: str) -> None:
    """The kubetune container's log as it loaded ``versions`` one after the other (engine_sync.py)."""
    lines = [
        f"2026-12-07 10:0{i}:00 INFO kubetune.serve: " + serving_line({ADEP: f"{ADEP}@{v}"})
        for i, v in enumerate(versions)
    ]
    text = "\n".join(lines)
    cluster.set_pod_log(cluster.ns, pod["metadata"]["name"], text, container="server")


def serve_config(cluster: Cluster) -> dict[str, Any]:
    config_map = cluster.get("configmaps", cluster.ns, f"{ADEP}-serve-config")
    assert config_map is not None
    return dict(yaml.safe_load(config_map["data"]["serve-config.yaml"]))


def replica_sets(cluster: Cluster) -> list[str]:
    return sorted(rs["metadata"]["name"] for rs in cluster.list("replicasets.apps", cluster.ns))


def test_a_new_version_is_loaded_in_place_without_rolling_the_vllm_pods(
    cluster: Cluster, operator: Operator
) -> None:
    bind_claims(cluster)
    succeeded_finetunejob(cluster, DIGEST, manifest=TRIAGE, **JOB)
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(vllm_deployment()))
    (pod,) = ready_pods(cluster, STABLE, 1)
    # Ready, but its kubetune container has not said what it serves: not Available yet.
    waiting = wait_adep(cluster, operator, lambda s: "0/1 ready pods serve it" in s.get("message", ""), "0/1")
    assert waiting["phase"] == "Progressing" and active_version(waiting) is None
    log_serving(cluster, pod, VERSION)
    wait_adep(cluster, operator, lambda s: active_version(s) == VERSION, "first version active")
    before = wait_deployment(cluster)
    sets = replica_sets(cluster)

    succeeded_finetunejob(cluster, DIGEST_B, manifest=TRIAGE, **JOB)  # a new run: version B
    uri_b = run_adapter_uri(cluster, "support-triage")
    cluster.wait_for(
        lambda: serve_config(cluster)["adapters"][0]["version"] == VERSION_B,
        timeout=TIMEOUT,
        message="ConfigMap at B",
    )
    assert serve_config(cluster)["adapters"] == [
        {"name": ADEP, "version": VERSION_B, "uri": uri_b, "digest": DIGEST_B}
    ]
    loading = wait_adep(cluster, operator, lambda s: VERSION_B in s.get("message", ""), "loading B")
    assert loading["phase"] == "Progressing" and active_version(loading) == VERSION
    assert "in place" in loading["message"] and "0/1 ready pods serve it" in loading["message"]
    log_serving(cluster, pod, VERSION, VERSION_B)  # the kubelet refreshed the file; B loaded, A unloaded
    live = wait_adep(
        cluster, operator, lambda s: active_version(s) == VERSION_B and s["phase"] == "Available", "B"
    )
    assert live["activeAdapter"]["digest"] == DIGEST_B
    after = wait_deployment(cluster)
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert after["spec"]["template"] == before["spec"]["template"]
    assert replica_sets(cluster) == sets
    assert [
        p["metadata"]["name"]
        for p in cluster.list("pods", cluster.ns, label_selector="kubetune.dev/track=stable")
    ] == [pod["metadata"]["name"]]
    assert any(
        e["reason"] == "RolledOut" and VERSION_B in e["message"] for e in cluster.events(cluster.ns, ADEP)
    )


def test_a_lora_rank_above_max_lora_rank_is_refused_at_resolution(
    cluster: Cluster, operator: Operator
) -> None:
    bind_claims(cluster)
    succeeded_finetunejob(cluster, DIGEST, manifest=TRIAGE, **JOB)
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(vllm_deployment(maxLoraRank=8)))

    refused = wait_adep(cluster, operator, lambda s: s.get("phase") == "Degraded", "Degraded")
    assert "LoRA rank 16, above runtime.maxLoraRank 8" in refused["message"]
    condition = next(c for c in refused["conditions"] if c["type"] == "AdapterResolved")
    assert condition["status"] == "False" and condition["reason"] == "RuntimeCannotServe"
    events = cluster.events(cluster.ns, ADEP)
    assert any(e["type"] == "Warning" and "maxLoraRank 8" in e["message"] for e in events)
    assert cluster.get("deployments.apps", cluster.ns, STABLE) is None
