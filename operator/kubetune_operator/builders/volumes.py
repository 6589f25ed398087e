"""Which volumes a training pod mounts, derived from the locations in a FineTuneJob spec.

Every ``pvc://<claim>/...`` becomes a PVC volume at ``/mnt/kubetune/pvc/<claim>``; every
``configmap://<name>/<key>`` a ConfigMap volume at ``/mnt/kubetune/configmap/<name>``. The same maps go
into the TrainConfig so the trainer finds its files with no Kubernetes knowledge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kubetune.api.finetunejob import FineTuneJobSpec

MOUNT_ROOT = "/mnt/kubetune"
CONFIG_DIR = "/etc/kubetune"
CONFIG_FILE = f"{CONFIG_DIR}/train-config.yaml"
CACHE_DIR = "/var/cache/kubetune"


@dataclass(frozen=True)
class PodStorage:
    """Volumes + mounts of a training pod and the mount maps for the TrainConfig."""

    volumes: list[dict[str, Any]] = field(default_factory=list)
    mounts: list[dict[str, Any]] = field(default_factory=list)
    pvc_mounts: dict[str, str] = field(default_factory=dict)
    configmap_mounts: dict[str, str] = field(default_factory=dict)


def _volume_of(uri: str, scheme: str) -> str | None:
    return uri[len(scheme) :].split("/", 1)[0] if uri.startswith(scheme) else None


def locations(spec: FineTuneJobSpec) -> list[str]:
    found = [spec.base_model.name, spec.output.uri, *(source.uri for source in spec.dataset.sources)]
    if spec.evaluation.champion_uri is not None:
        found.append(spec.evaluation.champion_uri)
    return found


def pod_storage(spec: FineTuneJobSpec, config_map_name: str) -> PodStorage:
    """The volumes of a training/validation pod: config, PVCs, ConfigMaps, scratch."""
    uris = locations(spec)
    output_claim = _volume_of(spec.output.uri, "pvc://")
    claims = sorted({c for u in uris if (c := _volume_of(u, "pvc://"))})
    config_maps = sorted({c for u in uris if (c := _volume_of(u, "configmap://"))})

    volumes: list[dict[str, Any]] = [
        {"name": "train-config", "configMap": {"name": config_map_name}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "cache", "emptyDir": {}},
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "train-config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "cache", "mountPath": CACHE_DIR},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    pvc_mounts: dict[str, str] = {}
    for index, claim in enumerate(claims):
        read_only = claim != output_claim
        volumes.append(
            {"name": f"pvc-{index}", "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}}
        )
        path = f"{MOUNT_ROOT}/pvc/{claim}"
        mounts.append({"name": f"pvc-{index}", "mountPath": path, "readOnly": read_only})
        pvc_mounts[claim] = path
    configmap_mounts: dict[str, str] = {}
    for index, name in enumerate(config_maps):
        volumes.append({"name": f"data-cm-{index}", "configMap": {"name": name}})
        path = f"{MOUNT_ROOT}/configmap/{name}"
        mounts.append({"name": f"data-cm-{index}", "mountPath": path, "readOnly": True})
        configmap_mounts[name] = path
    return PodStorage(volumes, mounts, pvc_mounts, configmap_mounts)


def secret_env(spec: FineTuneJobSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(env, envFrom) carrying credentials by Secret reference only — never by value."""
    env: list[dict[str, Any]] = []
    token = spec.base_model.token_secret_ref
    if token is not None:
        env.append(
            {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": token.name, "key": token.key}}}
        )
    refs = [spec.output.secret_ref, *(source.secret_ref for source in spec.dataset.sources)]
    names = sorted({ref.name for ref in refs if ref is not None})
    env_from = [{"secretRef": {"name": name}} for name in names]
    return env, env_from
