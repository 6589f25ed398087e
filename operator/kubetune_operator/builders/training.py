"""The ConfigMap, data-validation Job, training Job and rendezvous Service of a FineTuneJob.

Two Jobs on purpose: every dataset row is validated by a small CPU-only pod *before* any GPU is
requested (a bad row must never cost a GPU hour), then the training Job runs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from kubetune.api import exitcodes
from kubetune.api.finetunejob import FineTuneJob
from kubetune.api.trainconfig import TrainConfig
from kubetune.api.uris import ALLOWED_HOSTS_ENV
from kubetune_operator.builders.meta import (
    LABEL_FINETUNEJOB,
    LABEL_QUEUE,
    child_metadata,
    child_name,
    common_labels,
    yaml_text,
)
from kubetune_operator.builders.security import restricted_container_security, restricted_pod_security
from kubetune_operator.builders.volumes import CACHE_DIR, CONFIG_FILE, pod_storage, secret_env

TRAINER_CONTAINER = "trainer"
RENDEZVOUS_PORT = 29500


def config_map_name(job_name: str) -> str:
    return child_name(job_name, "config")


def validate_job_name(job_name: str) -> str:
    return child_name(job_name, "validate")


def train_job_name(job_name: str) -> str:
    return child_name(job_name, "train")


def rendezvous_service_name(job_name: str) -> str:
    return child_name(job_name, "rdzv")


def _labels(cr: FineTuneJob, component: str) -> dict[str, str]:
    return {**common_labels(cr.metadata.name, component), LABEL_FINETUNEJOB: cr.metadata.name}


def train_config(cr: FineTuneJob) -> TrainConfig:
    """The exact TrainConfig the pods read (mount paths filled in for this pod layout)."""
    storage = pod_storage(cr.spec, config_map_name(cr.metadata.name))
    return TrainConfig.from_spec(
        cr.metadata.name,
        cr.spec,
        storage.pvc_mounts,
        storage.configmap_mounts,
        cache_dir=CACHE_DIR,
        run_id=cr.metadata.uid,  # one location per run: a re-run never overwrites a served adapter
    )


def build_config_map(cr: FineTuneJob, owner: dict[str, Any]) -> dict[str, Any]:
    """ConfigMap holding the TrainConfig (no secrets: credentials travel as Secret references)."""
    text = yaml_text(train_config(cr).wire())
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": child_metadata(owner, config_map_name(cr.metadata.name), _labels(cr, "train-config")),
        "data": {"train-config.yaml": text},
    }


def _tolerations(cr: FineTuneJob, gpu: bool) -> list[dict[str, Any]]:
    tolerations = [t.wire() for t in cr.spec.resources.tolerations]
    if gpu and not any(t.get("key") == cr.spec.resources.gpu_resource for t in tolerations):
        # GPU nodes are commonly tainted with the GPU resource name; tolerate it when asking for GPUs.
        tolerations.append(
            {"key": cr.spec.resources.gpu_resource, "operator": "Exists", "effect": "NoSchedule"}
        )
    return tolerations


def _train_command(cr: FineTuneJob) -> tuple[list[str], list[str]]:
    """Plain `kubetune train` on one device; torchrun for several GPUs and/or nodes."""
    res = cr.spec.resources
    train_args = ["train", "-f", CONFIG_FILE, "--log-format", "json"]
    if res.nodes == 1 and res.gpus_per_node <= 1:
        return ["kubetune"], train_args
    launcher = [f"--nproc-per-node={max(res.gpus_per_node, 1)}"]
    if res.nodes == 1:
        launcher.append("--standalone")
    else:
        launcher += [
            f"--nnodes={res.nodes}",
            "--node-rank=$(JOB_COMPLETION_INDEX)",
            "--master-addr=$(MASTER_ADDR)",
            f"--master-port={RENDEZVOUS_PORT}",
        ]
    # `kubetune launch` keeps the trainer's exit code (torchrun reports 1 for any worker failure).
    return ["kubetune"], ["launch", "--", "torchrun", *launcher, "-m", "kubetune.cli", *train_args]


def _resources(cr: FineTuneJob, gpu: bool) -> dict[str, Any]:
    res = cr.spec.resources
    requests: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    if res.cpu:
        requests["cpu"] = limits["cpu"] = res.cpu
    if res.memory:
        requests["memory"] = limits["memory"] = res.memory
    if gpu and res.gpus_per_node > 0:
        limits[res.gpu_resource] = res.gpus_per_node
    return {k: v for k, v in (("requests", requests), ("limits", limits)) if v}


def _pod_spec(
    cr: FineTuneJob,
    image: str,
    pull_policy: str,
    service_account: str,
    command: list[str],
    args: list[str],
    resources: dict[str, Any],
    gpu: bool,
    allowed_hosts: Sequence[str] = (),
) -> dict[str, Any]:
    storage = pod_storage(cr.spec, config_map_name(cr.metadata.name))
    env, env_from = secret_env(cr.spec)
    env = [
        {"name": "HOME", "value": "/tmp"},
        {"name": "KUBETUNE_TERMINATION_LOG", "value": "/dev/termination-log"},
        {"name": "HF_HOME", "value": f"{CACHE_DIR}/hf"},
        *env,
    ]
    if allowed_hosts:  # the chart's allowedHosts, re-checked by the trainer after DNS resolution
        env.append({"name": ALLOWED_HOSTS_ENV, "value": json.dumps(list(allowed_hosts))})
    if cr.spec.resources.nodes > 1 and gpu:
        env += [
            {
                "name": "MASTER_ADDR",
                "value": f"{train_job_name(cr.metadata.name)}-0.{rendezvous_service_name(cr.metadata.name)}",
            },
            {"name": "MASTER_PORT", "value": str(RENDEZVOUS_PORT)},
            {"name": "NNODES", "value": str(cr.spec.resources.nodes)},
        ]
    container: dict[str, Any] = {
        "name": TRAINER_CONTAINER,
        "image": image,
        "imagePullPolicy": pull_policy,
        "command": command,
        "args": args,
        "env": env,
        "volumeMounts": storage.mounts,
        "securityContext": restricted_container_security(),
        "terminationMessagePath": "/dev/termination-log",
        # The trainer writes a JSON result there; a crash before that still reports its last log lines.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if env_from:
        container["envFrom"] = env_from
    if resources:
        container["resources"] = resources
    if cr.spec.resources.nodes > 1 and gpu:
        container["ports"] = [{"name": "rendezvous", "containerPort": RENDEZVOUS_PORT}]
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "serviceAccountName": service_account,
        "automountServiceAccountToken": False,
        "securityContext": restricted_pod_security(),
        "containers": [container],
        "volumes": storage.volumes,
    }
    if cr.spec.resources.node_selector and gpu:
        spec["nodeSelector"] = dict(cr.spec.resources.node_selector)
    tolerations = _tolerations(cr, gpu)
    if tolerations:
        spec["tolerations"] = tolerations
    if cr.spec.resources.priority_class_name:
        spec["priorityClassName"] = cr.spec.resources.priority_class_name
    if cr.spec.resources.nodes > 1 and gpu:
        spec["subdomain"] = rendezvous_service_name(cr.metadata.name)
    return spec


def _pod_failure_policy() -> dict[str, Any]:
    return {
        "rules": [
            # Preemption, eviction, node drain: not the trainer's fault, never counted against backoffLimit.
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            # Bad config, bad data, failed quality gate: retrying cannot help.
            {
                "action": "FailJob",
                "onExitCodes": {
                    "containerName": TRAINER_CONTAINER,
                    "operator": "In",
                    "values": list(exitcodes.NON_RETRYABLE),
                },
            },
        ]
    }


def build_validate_job(
    cr: FineTuneJob,
    owner: dict[str, Any],
    image: str,
    pull_policy: str,
    service_account: str,
    cpu: str,
    memory: str,
    allowed_hosts: Sequence[str] = (),
) -> dict[str, Any]:
    """A CPU-only Job that checks every dataset row before any GPU is requested."""
    labels = _labels(cr, "validate-data")
    resources = {"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": memory}}
    pod = _pod_spec(
        cr,
        image,
        pull_policy,
        service_account,
        ["kubetune"],
        ["validate-data", "-f", CONFIG_FILE, "--log-format", "json"],
        resources,
        gpu=False,
        allowed_hosts=allowed_hosts,
    )
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": child_metadata(owner, validate_job_name(cr.metadata.name), labels),
        "spec": {
            "suspend": cr.spec.suspend,
            "backoffLimit": 2,
            "podFailurePolicy": _pod_failure_policy(),
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }


def build_training_job(
    cr: FineTuneJob,
    owner: dict[str, Any],
    image: str,
    pull_policy: str,
    service_account: str,
    allowed_hosts: Sequence[str] = (),
) -> dict[str, Any]:
    """The GPU training Job: Indexed with one pod per node when nodes > 1."""
    res = cr.spec.resources
    labels = _labels(cr, "train")
    job_labels = dict(labels)
    if res.queue_name:
        job_labels[LABEL_QUEUE] = res.queue_name
    command, args = _train_command(cr)
    pod = _pod_spec(
        cr,
        image,
        pull_policy,
        service_account,
        command,
        args,
        _resources(cr, gpu=True),
        gpu=True,
        allowed_hosts=allowed_hosts,
    )
    spec: dict[str, Any] = {
        # Kueue admits a queued Job by un-suspending it, so a queued Job is always created suspended.
        "suspend": cr.spec.suspend or bool(res.queue_name),
        "backoffLimit": cr.spec.backoff_limit,
        "podFailurePolicy": _pod_failure_policy(),
        "completions": res.nodes,
        "parallelism": res.nodes,
        "template": {"metadata": {"labels": labels}, "spec": pod},
    }
    if res.nodes > 1:
        spec["completionMode"] = "Indexed"
    if cr.spec.active_deadline_seconds is not None:
        spec["activeDeadlineSeconds"] = cr.spec.active_deadline_seconds
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": child_metadata(owner, train_job_name(cr.metadata.name), job_labels),
        "spec": spec,
    }


def build_trainer_service_account(namespace: str, name: str) -> dict[str, Any]:
    """The trainer ServiceAccount: no token mounted, no RBAC binding. Shared by every job in the
    namespace, so it has no owner (deleting one job must not delete it)."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": name, "namespace": namespace, "labels": common_labels("kubetune", "trainer")},
        "automountServiceAccountToken": False,
    }


def build_rendezvous_service(cr: FineTuneJob, owner: dict[str, Any]) -> dict[str, Any]:
    """Headless Service giving Indexed Job pods stable DNS names for the torchrun rendezvous."""
    labels = _labels(cr, "rendezvous")
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(owner, rendezvous_service_name(cr.metadata.name), labels),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {LABEL_FINETUNEJOB: cr.metadata.name, "app.kubernetes.io/component": "train"},
            "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT}],
        },
    }
