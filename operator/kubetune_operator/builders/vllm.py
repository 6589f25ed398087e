"""The vLLM container of a `runtime.engine: vllm` serving pod, and the engine the kubetune container
fronts — pure functions of the spec.

vLLM listens on the pod's loopback only (the kubetune container is the Service's target, so requests,
metrics, feedback and monitoring stay kubetune's). It starts with the base model and no adapters:
the kubetune container loads each adapter version through vLLM's runtime LoRA API, which
VLLM_ALLOW_RUNTIME_LORA_UPDATING enables. The adapter volumes are mounted at the same paths in both
containers, so the `lora_path` the kubetune container sends resolves inside vLLM too.
"""

from __future__ import annotations

from typing import Any

from kubetune_trainer.serve.config import EngineSpec

from kubetune.api.adapterdeployment import AdapterDeployment
from kubetune.api.common import SecretKeyRef
from kubetune_operator.builders.security import restricted_container_security
from kubetune_operator.builders.volumes import CACHE_DIR, MOUNT_ROOT

VLLM_CONTAINER = "vllm"
VLLM_IMAGE = "docker.io/vllm/vllm-openai:v0.9.2"
VLLM_PORT = 8001
SHM_VOLUME = "dshm"
# The kubetune container beside vLLM loads no model: its python, the HTTP relay and the metrics.
FRONT_REQUESTS = {"cpu": "500m", "memory": "1Gi"}
# The probes run inside the container: vLLM binds 127.0.0.1, which a kubelet httpGet cannot reach.
HEALTH_CHECK = [
    "python3",
    "-c",
    f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{VLLM_PORT}/health', timeout=4)",
]


def uses_vllm(ad: AdapterDeployment) -> bool:
    return ad.spec.runtime.engine == "vllm"


def engine_spec(ad: AdapterDeployment, config_file: str) -> EngineSpec | None:
    """What the kubetune container fronts: vLLM on the pod's loopback (None for engine kubetune)."""
    if not uses_vllm(ad):
        return None
    return EngineSpec(url=f"http://127.0.0.1:{VLLM_PORT}", config_file=config_file, api_key=None)


def model_path(base: str) -> str:
    """The base as `vllm serve` takes it: a hub id as is, pvc://claim/path as its mount path."""
    if base.startswith("pvc://"):
        return f"{MOUNT_ROOT}/pvc/{base[len('pvc://') :]}"
    return base.removeprefix("file://")


def vllm_args(ad: AdapterDeployment) -> list[str]:
    runtime = ad.spec.runtime
    return [
        "serve",
        model_path(ad.spec.base_model.name),
        "--host",
        "127.0.0.1",
        "--port",
        str(VLLM_PORT),
        "--enable-lora",
        "--max-loras",
        str(runtime.max_loras),
        "--max-lora-rank",
        str(runtime.max_lora_rank),
        *runtime.args,
    ]


def vllm_container(
    ad: AdapterDeployment,
    pull_policy: str,
    adapter_mounts: list[dict[str, Any]],
    hf_token: SecretKeyRef | None,
) -> dict[str, Any]:
    """vLLM with the pod's GPUs; `adapter_mounts` are the kubetune container's PVC mounts (made
    read-only here: vLLM only reads adapters and models)."""
    res = ad.spec.resources
    limits: dict[str, Any] = {res.gpu_resource: res.gpus}
    requests: dict[str, Any] = {}
    if res.cpu:
        requests["cpu"] = limits["cpu"] = res.cpu
    if res.memory:
        requests["memory"] = limits["memory"] = res.memory
    env: list[dict[str, Any]] = [
        {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"},
        {"name": "HOME", "value": "/tmp"},
        {"name": "HF_HOME", "value": f"{CACHE_DIR}/hf"},
        {"name": "VLLM_NO_USAGE_STATS", "value": "1"},
    ]
    if hf_token is not None:
        env.append(
            {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": hf_token.name, "key": hf_token.key}}}
        )
    mounts = [
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "cache", "mountPath": CACHE_DIR},
        {"name": SHM_VOLUME, "mountPath": "/dev/shm"},
    ] + [{**m, "readOnly": True} for m in adapter_mounts]
    return {
        "name": VLLM_CONTAINER,
        "image": ad.spec.runtime.image or VLLM_IMAGE,
        "imagePullPolicy": pull_policy,
        "command": ["vllm"],
        "args": vllm_args(ad),
        "env": env,
        "volumeMounts": mounts,
        # Loading weights and capturing CUDA graphs can take many minutes on a large base.
        "startupProbe": {"exec": {"command": HEALTH_CHECK}, "periodSeconds": 10, "failureThreshold": 180},
        "readinessProbe": {"exec": {"command": HEALTH_CHECK}, "periodSeconds": 10, "failureThreshold": 3},
        "livenessProbe": {"exec": {"command": HEALTH_CHECK}, "periodSeconds": 15, "failureThreshold": 4},
        "resources": {k: v for k, v in (("requests", requests), ("limits", limits)) if v},
        "securityContext": restricted_container_security(),
    }


def vllm_volumes(ad: AdapterDeployment) -> list[dict[str, Any]]:
    """Shared memory for vLLM's workers (the container runtime's default /dev/shm is 64 MiB)."""
    if not uses_vllm(ad):
        return []
    return [{"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}}]
