"""`spec.runtime` (issue 24): what the API refuses for engine vllm, the vLLM container the operator
renders beside the kubetune front, and the refusals found only when the FineTuneJob is resolved."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from kubetune_operator.adapter_status import RUNTIME_REFUSED, Unresolved, resolve_adapter
from kubetune_operator.builders.serving import build_deployment, build_serve_config_map
from kubetune_operator.builders.vllm import model_path
from pydantic import ValidationError

from kubetune.api.adapterdeployment import AdapterDeployment
from kubetune.api.runtime import owned_flag

ROOT = Path(__file__).resolve().parents[2]
TRIAGE = yaml.safe_load((ROOT / "examples/k8s/finetunejob-support-triage.yaml").read_text())


def vllm_adep(**spec: Any) -> tuple[AdapterDeployment, dict[str, Any]]:
    doc: dict[str, Any] = {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "AdapterDeployment",
        "metadata": {"name": "triage", "namespace": "ml", "uid": "u-1", "generation": 1},
        "spec": {
            "baseModel": {"name": "pvc://models/smollm2"},
            "task": "causal-lm",
            "adapter": {"fineTuneJobRef": {"name": "support-triage"}},
            "resources": {"gpus": 1},
            "runtime": {"engine": "vllm"},
            **spec,
        },
    }
    return AdapterDeployment.model_validate(doc), doc


def triage_job(r: int = 16, recipe: str = "lora") -> dict[str, Any]:
    doc = yaml.safe_load(yaml.safe_dump(TRIAGE))
    doc["spec"]["lora"]["r"] = r
    doc["spec"]["training"]["recipe"] = recipe
    doc["status"] = {"phase": "Succeeded", "result": {"adapterUri": "pvc://out/triage/a", "digest": None}}
    return doc


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"task": "sequence-classification"}, "vLLM serves no LoRA sequence classifiers"),
        ({"resources": {"gpus": 0}}, "runtime.engine vllm needs a GPU"),
        ({"runtime": {"engine": "vllm", "args": ["--max_loras=9"]}}, "runtime.args must not set"),
        ({"runtime": {"engine": "vllm", "maxLoraRank": 12}}, "maxLoraRank must be one of vLLM's ranks"),
        ({"runtime": {"engine": "vllm", "maxLoras": 1}}, "greater than or equal to 2"),
    ],
)
def test_engine_vllm_refuses_what_vllm_cannot_do(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        vllm_adep(**spec)


def test_owned_flags_in_every_spelling() -> None:
    assert [owned_flag(a) for a in ("--port", "--port=1", "--enable_lora", "--max-lora-rank 8")] == [
        "--port",
        "--port",
        "--enable-lora",
        "--max-lora-rank",
    ]
    assert owned_flag("--portal") is None and owned_flag("--enforce-eager") is None


def test_the_pod_holds_vllm_and_the_kubetune_front() -> None:
    ad, owner = vllm_adep(
        runtime={"engine": "vllm", "maxLoras": 3, "maxLoraRank": 32, "args": ["--enforce-eager"]}
    )
    resolved = resolve_adapter(ad, triage_job(), [])
    assert not isinstance(resolved, Unresolved)
    cm = build_serve_config_map(ad, owner, resolved)
    dep = build_deployment(ad, owner, resolved, cm, "kubetune:dev", "IfNotPresent", "kubetune-server")
    vllm, front = dep["spec"]["template"]["spec"]["containers"]
    assert vllm["args"][:2] == ["serve", "/mnt/kubetune/pvc/models/smollm2"]
    assert vllm["args"][-5:] == ["--max-loras", "3", "--max-lora-rank", "32", "--enforce-eager"]
    assert vllm["resources"]["limits"] == {"nvidia.com/gpu": 1}
    assert front["resources"] == {"requests": {"cpu": "500m", "memory": "1Gi"}}  # the GPU is vLLM's
    vllm_mounts = {m["mountPath"]: m for m in vllm["volumeMounts"]}
    for mount in front["volumeMounts"]:
        if mount["name"].startswith("pvc-"):  # the same paths, so the front's lora_path resolves in vLLM
            assert vllm_mounts[mount["mountPath"]]["readOnly"] is True
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}} in (
        dep["spec"]["template"]["spec"]["volumes"]
    )
    config = yaml.safe_load(cm["data"]["serve-config.yaml"])
    assert config["engine"]["url"] == "http://127.0.0.1:8001"


def test_engine_kubetune_renders_one_container_as_before() -> None:
    ad, owner = vllm_adep(runtime={"engine": "kubetune"}, resources={"gpus": 1})
    resolved = resolve_adapter(ad, triage_job(), [])
    assert not isinstance(resolved, Unresolved)
    cm = build_serve_config_map(ad, owner, resolved)
    dep = build_deployment(ad, owner, resolved, cm, "kubetune:dev", "IfNotPresent", "kubetune-server")
    (server,) = dep["spec"]["template"]["spec"]["containers"]
    assert server["resources"]["limits"] == {"nvidia.com/gpu": 1}
    assert "engine" not in yaml.safe_load(cm["data"]["serve-config.yaml"])


@pytest.mark.parametrize(
    ("job", "message"),
    [
        (triage_job(r=64), "LoRA rank 64, above runtime.maxLoraRank 16"),
        (triage_job(recipe="heads"), "training.recipe heads"),
    ],
)
def test_what_vllm_cannot_load_is_refused_when_the_job_resolves(job: dict[str, Any], message: str) -> None:
    ad, _ = vllm_adep()
    refused = resolve_adapter(ad, job, [])
    assert isinstance(refused, Unresolved) and refused.reason == RUNTIME_REFUSED
    assert message in refused.message


def test_model_path_maps_a_pvc_base_to_its_mount() -> None:
    assert model_path("pvc://models/llama") == "/mnt/kubetune/pvc/models/llama"
    assert model_path("meta-llama/Llama-3.1-8B-Instruct") == "meta-llama/Llama-3.1-8B-Instruct"
