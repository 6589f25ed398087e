"""ConfigMap (ServeConfig), Deployment, Service, PodDisruptionBudget and PodMonitor of an
AdapterDeployment — pure functions of the spec and the resolved adapter."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from kubetune_trainer.serve.config import (
    ADMIN_TOKEN_ENV,
    AdapterSpec,
    ServeConfig,
    ServeMonitoring,
    TaskServing,
)

from kubetune.api.adapterdeployment import AdapterDeployment, ExtraTask
from kubetune.api.common import SecretKeyRef
from kubetune.api.finetunejob import TaskType
from kubetune.api.monitoring import ReviewSpec
from kubetune_operator.builders.meta import (
    LABEL_ADAPTERDEPLOYMENT,
    child_metadata,
    child_name,
    common_labels,
    yaml_text,
)
from kubetune_operator.builders.security import restricted_container_security, restricted_pod_security
from kubetune_operator.builders.vllm import (
    FRONT_REQUESTS,
    engine_spec,
    uses_vllm,
    vllm_container,
    vllm_volumes,
)
from kubetune_operator.builders.volumes import CACHE_DIR, CONFIG_DIR, MOUNT_ROOT

SERVER_CONTAINER = "server"
SERVE_CONFIG_FILE = f"{CONFIG_DIR}/serve-config.yaml"
DRAIN_SECONDS = 5
# How long a rollout may go without progress before it is reported stuck: the Deployment's, and an
# in-place load's (in_place_load.py).
PROGRESS_DEADLINE_SECONDS = 1200


@dataclass(frozen=True)
class ResolvedAdapter:
    """What the operator decided to serve: a concrete URI and version, and the digest the servers
    check the weights at that URI against (None: an adapter.uri whose digest nobody recorded)."""

    version: str
    uri: str
    task: TaskType
    digest: str | None = None
    fine_tune_job: str | None = None
    accuracy: float | None = None
    metric: str | None = None  # what `accuracy` measures (the job's gate metric), for messages


@dataclass(frozen=True)
class ResolvedTask:
    """An extra task (spec.extraTasks[]) with the adapter the operator decided to serve for it."""

    spec: ExtraTask
    adapter: ResolvedAdapter


Track = Literal["stable", "canary"]
LABEL_TRACK = "kubetune.dev/track"
VERSION_ANNOTATION = "kubetune.dev/adapter-version"
CONFIG_HASH_ANNOTATION = "kubetune.dev/config-hash"
EXTRA_VERSIONS_ANNOTATION = "kubetune.dev/extra-adapter-versions"


def extra_versions(extras: Sequence[ResolvedTask]) -> str | None:
    """``name=version,...`` of the extra tasks (None without any): the pod template's annotation."""
    return ",".join(f"{t.spec.name}={t.adapter.version}" for t in extras) or None


def server_name(name: str, track: Track = "stable") -> str:
    return child_name(name, "server" if track == "stable" else "canary")


def selector_labels(ad: AdapterDeployment) -> dict[str, str]:
    return {LABEL_ADAPTERDEPLOYMENT: ad.metadata.name, "app.kubernetes.io/component": "server"}


def track_selector(ad: AdapterDeployment, track: Track = "stable") -> dict[str, str]:
    """matchLabels of one track's pods: its Deployment's selector."""
    return {**selector_labels(ad), LABEL_TRACK: track}


def scale_selector(ad: AdapterDeployment) -> str:
    """status.selector for the scale subresource: the stable track's pods, as a label-selector string.

    An HPA averages its Pods metric over the pods this selects and sizes spec.replicas from their
    count; the canary's pods are sized from spec.replicas on top of them, so counting them here
    would make each scale-up feed the next."""
    return ",".join(f"{k}={v}" for k, v in sorted(track_selector(ad).items()))


def _labels(ad: AdapterDeployment, track: Track | None = None) -> dict[str, str]:
    labels = {**common_labels(ad.metadata.name, "server"), **selector_labels(ad)}
    return {**labels, LABEL_TRACK: track} if track else labels


def _claim(uri: str) -> str | None:
    return uri[len("pvc://") :].split("/", 1)[0] if uri.startswith("pvc://") else None


def _fresh_claim(ad: AdapterDeployment) -> str | None:
    fresh = ad.spec.monitoring.fresh_data
    return _claim(fresh.uri) if fresh is not None else None


def _claims(ad: AdapterDeployment, adapter: ResolvedAdapter, extras: Sequence[ResolvedTask]) -> list[str]:
    """PVCs a serving pod mounts: adapters and models of every task (read-only) and the fresh-data
    sample (writable)."""
    uris = [adapter.uri, ad.spec.base_model.name]
    uris += [u for t in extras for u in (t.adapter.uri, t.spec.base_model.name)]
    claims = {c for u in uris if (c := _claim(u))}
    fresh = _fresh_claim(ad)
    return sorted(claims | ({fresh} if fresh else set()))


def adapter_spec(name: str, adapter: ResolvedAdapter) -> AdapterSpec:
    """A resolved adapter as the server loads it: pinned by URI and digest, so a pod never serves
    other weights under this version (a rollback reloads exactly what was recorded)."""
    return AdapterSpec(name=name, version=adapter.version, uri=adapter.uri, digest=adapter.digest)


def _extra_task(ad: AdapterDeployment, extra: ResolvedTask) -> TaskServing:
    """One of ServeConfig.tasks: batched like the primary task, its own limits, drift computed inline
    but no fresh-data sample (retraining follows the primary adapter only)."""
    opts, spec = ad.spec.serving, extra.spec
    return TaskServing(
        base_model=spec.base_model,
        task=extra.adapter.task,
        adapters=[adapter_spec(spec.name, extra.adapter)],
        max_batch_size=opts.max_batch_size,
        batch_wait_ms=opts.batch_wait_ms,
        max_input_tokens=spec.max_input_tokens or opts.max_input_tokens,
        max_new_tokens=spec.max_new_tokens or opts.max_new_tokens,
        truncate=opts.truncate,
        monitoring=ServeMonitoring(window_size=ad.spec.monitoring.window_size),
    )


def serve_config(
    ad: AdapterDeployment, adapter: ResolvedAdapter, extras: Sequence[ResolvedTask] = ()
) -> ServeConfig:
    """The ServeConfig every pod reads: the declared adapter set of every task, loaded eagerly at
    start-up."""
    opts = ad.spec.serving
    fresh = ad.spec.monitoring.fresh_data
    return ServeConfig(
        base_model=ad.spec.base_model,
        task=adapter.task,
        adapters=[adapter_spec(ad.metadata.name, adapter)],
        max_batch_size=opts.max_batch_size,
        batch_wait_ms=opts.batch_wait_ms,
        max_input_tokens=opts.max_input_tokens,
        max_new_tokens=opts.max_new_tokens,
        max_queued=opts.max_queued,
        truncate=opts.truncate,
        port=opts.port,
        precision=opts.precision,
        quantize=opts.quantize,
        merge_single_adapter=opts.merge_single_adapter,
        monitoring=ServeMonitoring(
            window_size=ad.spec.monitoring.window_size,
            fresh_data_uri=fresh.uri if fresh else None,
            fresh_max_rows=fresh.max_rows if fresh else 20000,
            drop_fields=fresh.drop_fields if fresh else [],
            hash_fields=fresh.hash_fields if fresh else [],
            review=fresh.review if fresh else ReviewSpec(),  # no fresh data: the server keeps no queue
        ),
        tasks=[_extra_task(ad, extra) for extra in extras],
        pvc_mounts={claim: f"{MOUNT_ROOT}/pvc/{claim}" for claim in _claims(ad, adapter, extras)},
        cache_dir=CACHE_DIR,
        admin_token=None,
        engine=engine_spec(ad, SERVE_CONFIG_FILE),  # runtime vllm: this container fronts it
    )


def build_serve_config_map(
    ad: AdapterDeployment,
    owner: dict[str, Any],
    adapter: ResolvedAdapter,
    track: Track = "stable",
    extras: Sequence[ResolvedTask] = (),
) -> dict[str, Any]:
    text = yaml_text(serve_config(ad, adapter, extras).wire())
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": child_metadata(
            owner,
            child_name(ad.metadata.name, "serve-config" if track == "stable" else "canary-serve-config"),
            _labels(ad, track),
        ),
        "data": {"serve-config.yaml": text},
    }


def config_hash(config_map: dict[str, Any]) -> str:
    """Changes whenever the served adapter set changes; in the pod template it rolls the Deployment."""
    return _hash(config_map["data"]["serve-config.yaml"])


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def loads_in_place(ad: AdapterDeployment, track: Track) -> bool:
    """Whether a new adapter version reaches this track's pods without a restart: runtime vllm's
    stable track. Its kubetune container re-reads the ServeConfig ConfigMap (mounted as a directory,
    which the kubelet refreshes in place) and loads the version into the running engine, which would
    otherwise spend minutes loading the base and capturing CUDA graphs again. The pods log what they
    serve (kubetune_trainer.serve.served_report), which the operator reads for status. A canary
    Deployment keeps the version in its pod template: it starts with its candidate and is judged from
    its Deployment's rollout, as with engine kubetune."""
    return uses_vllm(ad) and track == "stable"


def template_annotations(
    ad: AdapterDeployment,
    adapter: ResolvedAdapter,
    config_map: dict[str, Any],
    track: Track,
    extras: Sequence[ResolvedTask],
) -> dict[str, str]:
    """The pod template's annotations, whose change rolls the pods. Loaded in place: the hash of the
    ServeConfig without its adapters (a new base, limit or engine setting still restarts them; the
    claims an adapter lives on are the pod's volumes, so a version on another PVC does too). Else the
    hash of the whole ServeConfig, and the versions, which status reads back."""
    if loads_in_place(ad, track):
        pinned = serve_config(ad, adapter, extras).model_copy(update={"adapters": []})
        return {CONFIG_HASH_ANNOTATION: _hash(yaml_text(pinned.wire()))}
    annotations = {CONFIG_HASH_ANNOTATION: config_hash(config_map), VERSION_ANNOTATION: adapter.version}
    if (versions := extra_versions(extras)) is not None:
        annotations[EXTRA_VERSIONS_ANNOTATION] = versions
    return annotations


def _hf_token(ad: AdapterDeployment, extras: Sequence[ResolvedTask]) -> SecretKeyRef | None:
    """The one Hugging Face token Secret of the pod's base models (the API allows no two)."""
    refs = [ad.spec.base_model.token_secret_ref] + [t.spec.base_model.token_secret_ref for t in extras]
    return next((ref for ref in refs if ref is not None), None)


def _container(
    ad: AdapterDeployment, image: str, pull_policy: str, claims: list[str], extras: Sequence[ResolvedTask]
) -> dict[str, Any]:
    res = ad.spec.resources
    requests: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    if uses_vllm(ad):  # spec.resources are vLLM's; the front forwards requests and keeps the metrics
        requests.update(FRONT_REQUESTS)
    else:
        if res.cpu:
            requests["cpu"] = limits["cpu"] = res.cpu
        if res.memory:
            requests["memory"] = limits["memory"] = res.memory
        if res.gpus:
            limits[res.gpu_resource] = res.gpus
    env: list[dict[str, Any]] = [
        {"name": "HOME", "value": "/tmp"},
        {"name": "HF_HOME", "value": f"{CACHE_DIR}/hf"},
    ]
    if ad.spec.admin_token_secret_ref is not None:
        ref = ad.spec.admin_token_secret_ref
        env.append(
            {"name": ADMIN_TOKEN_ENV, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
        )
    if (token := _hf_token(ad, extras)) is not None:
        env.append(
            {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": token.name, "key": token.key}}}
        )
    mounts = [
        {"name": "serve-config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "cache", "mountPath": CACHE_DIR},
    ] + [
        {"name": f"pvc-{i}", "mountPath": f"{MOUNT_ROOT}/pvc/{c}", "readOnly": c != _fresh_claim(ad)}
        for i, c in enumerate(claims)
    ]
    container: dict[str, Any] = {
        "name": SERVER_CONTAINER,
        "image": image,
        "imagePullPolicy": pull_policy,
        "command": ["kubetune"],
        "args": ["serve", "-f", SERVE_CONFIG_FILE],
        "ports": [{"name": "http", "containerPort": ad.spec.serving.port}],
        "env": env,
        "volumeMounts": mounts,
        # Ready only once every declared adapter is loaded and warmed up (the server's /readyz).
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "http"},
            "periodSeconds": 5,
            "failureThreshold": 2,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "http"},
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        # Loading a base model can take minutes; liveness starts counting only after start-up.
        "startupProbe": {
            "httpGet": {"path": "/healthz", "port": "http"},
            "periodSeconds": 5,
            "failureThreshold": 120,
        },
        # Give Service endpoints time to drop the pod before SIGTERM starts the server's drain.
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(DRAIN_SECONDS)]}}},
        "securityContext": restricted_container_security(),
    }
    if requests or limits:
        container["resources"] = {k: v for k, v in (("requests", requests), ("limits", limits)) if v}
    return container


def _containers(
    ad: AdapterDeployment, image: str, pull_policy: str, claims: list[str], extras: Sequence[ResolvedTask]
) -> list[dict[str, Any]]:
    """The kubetune server; with runtime vllm, vLLM first and the kubetune container fronting it."""
    server = _container(ad, image, pull_policy, claims, extras)
    if not uses_vllm(ad):
        return [server]
    pvcs = [m for m in server["volumeMounts"] if m["name"].startswith("pvc-")]
    return [vllm_container(ad, pull_policy, pvcs, _hf_token(ad, extras)), server]


def build_deployment(
    ad: AdapterDeployment,
    owner: dict[str, Any],
    adapter: ResolvedAdapter,
    config_map: dict[str, Any],
    image: str,
    pull_policy: str,
    service_account: str,
    track: Track = "stable",
    replicas: int | None = None,
    extras: Sequence[ResolvedTask] = (),
) -> dict[str, Any]:
    """Rolling update that never drops capacity (maxUnavailable 0): new pods must be ready first.

    A canary is a second Deployment (track=canary) behind the same Service: its share of the pods is
    its share of the traffic. Both tracks serve the same extra tasks.
    """
    claims = _claims(ad, adapter, extras)
    res = ad.spec.resources
    volumes: list[dict[str, Any]] = [
        {"name": "serve-config", "configMap": {"name": config_map["metadata"]["name"]}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "cache", "emptyDir": {}},
    ] + [
        {"name": f"pvc-{i}", "persistentVolumeClaim": {"claimName": c, "readOnly": c != _fresh_claim(ad)}}
        for i, c in enumerate(claims)
    ]
    pod: dict[str, Any] = {
        "serviceAccountName": service_account,
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": 60,
        "securityContext": restricted_pod_security(),
        "containers": _containers(ad, image, pull_policy, claims, extras),
        "volumes": volumes + vllm_volumes(ad),
    }
    if res.node_selector:
        pod["nodeSelector"] = dict(res.node_selector)
    tolerations = [t.wire() for t in res.tolerations]
    if res.gpus and not any(t.get("key") == res.gpu_resource for t in tolerations):
        tolerations.append({"key": res.gpu_resource, "operator": "Exists", "effect": "NoSchedule"})
    if tolerations:
        pod["tolerations"] = tolerations
    if res.priority_class_name:
        pod["priorityClassName"] = res.priority_class_name
    labels = _labels(ad, track)
    annotations = template_annotations(ad, adapter, config_map, track, extras)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": child_metadata(owner, server_name(ad.metadata.name, track), labels),
        "spec": {
            "replicas": ad.spec.replicas if replicas is None else replicas,
            "selector": {"matchLabels": track_selector(ad, track)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "progressDeadlineSeconds": PROGRESS_DEADLINE_SECONDS,
            "template": {
                "metadata": {"labels": labels, "annotations": annotations},
                "spec": pod,
            },
        },
    }


def build_service(ad: AdapterDeployment, owner: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(owner, ad.metadata.name, _labels(ad)),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(ad),
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def build_pdb(ad: AdapterDeployment, owner: dict[str, Any]) -> dict[str, Any]:
    """At most one serving pod down for voluntary disruptions (drains, upgrades)."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": child_metadata(owner, server_name(ad.metadata.name), _labels(ad)),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(ad)}},
    }


def build_pod_monitor(ad: AdapterDeployment, owner: dict[str, Any]) -> dict[str, Any]:
    """Prometheus Operator scrape config for /metrics (only created when the CRD exists)."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": child_metadata(owner, server_name(ad.metadata.name), _labels(ad)),
        "spec": {
            "selector": {"matchLabels": selector_labels(ad)},
            "podMetricsEndpoints": [{"port": "http", "path": "/metrics", "interval": "15s"}],
            # The queue metric KEDA's trigger sums is selected by AdapterDeployment and track.
            "podTargetLabels": [LABEL_ADAPTERDEPLOYMENT, LABEL_TRACK],
        },
    }
