"""What the AdapterDeployment tests do over and over against the real cluster: run the support-intents
FineTuneJob to Succeeded through the real Job controller, and play the kubelet's readiness prober for
the serving pods the real Deployment and ReplicaSet controllers create."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from controlplane import Cluster
from ftj_helpers import INTENTS, TIMEOUT, apply, finish_job, wait_job
from kubetune_trainer.artifacts import adapter_uri
from operator_process import Operator

from kubetune.api.trainconfig import TrainConfig

ADEP = "support-intents"
STABLE, CANARY = "support-intents-server", "support-intents-canary"
VERSION_ANNOTATION = "kubetune.dev/adapter-version"
REVISION_ANNOTATION = "deployment.kubernetes.io/revision"


def succeeded_finetunejob(
    cluster: Cluster, digest: str, accuracy: float = 0.9583, manifest: Path = INTENTS, **spec: Any
) -> None:
    """(Re)run the FineTuneJob of ``manifest`` (default support-intents; ``spec``: fields to override)
    through the operator to Succeeded with ``digest``: its validate and training pods end as a
    kubelet would report it, the real Job controller completes the Jobs, the operator reads the
    trainer's termination message (adapter where this run's TrainConfig says: run_adapter_uri)."""
    name = yaml.safe_load(manifest.read_text())["metadata"]["name"]
    if cluster.get("ftj", cluster.ns, name) is not None:
        # Foreground: kubectl returns once the garbage collector removed the old Jobs, so the next
        # run's Jobs (same deterministic names) are new ones.
        cluster.kubectl("delete", "ftj", name, "--cascade=foreground", "--timeout=60s")
    apply(cluster, manifest, **spec)
    finish_job(cluster, wait_job(cluster, f"{name}-validate")["metadata"]["name"])
    result = {
        "adapterUri": run_adapter_uri(cluster, name),
        "digest": digest,
        "metrics": {"after_accuracy": accuracy},
    }
    finish_job(cluster, wait_job(cluster, f"{name}-train")["metadata"]["name"], 0, result)
    cluster.wait_for(
        lambda: (cluster.get("ftj", cluster.ns, name) or {}).get("status", {}).get("phase") == "Succeeded",
        timeout=TIMEOUT,
        message="FineTuneJob Succeeded",
    )


def run_adapter_uri(cluster: Cluster, name: str) -> str:
    """Where the trainer of FineTuneJob ``name``'s current run writes its adapter, as the trainer
    computes it from the TrainConfig the operator wrote into the pods' ConfigMap."""
    config_map = cluster.get("configmaps", cluster.ns, f"{name}-config")
    assert config_map is not None, f"ConfigMap {name}-config missing"
    return adapter_uri(TrainConfig.model_validate(yaml.safe_load(config_map["data"]["train-config.yaml"])))


def deployment(cluster: Cluster, name: str = STABLE) -> dict[str, Any]:
    dep = cluster.get("deployments.apps", cluster.ns, name)
    assert dep is not None, f"Deployment {name} missing"
    return dep


def wait_deployment(cluster: Cluster, name: str = STABLE) -> dict[str, Any]:
    return cluster.wait_for(
        lambda: cluster.get("deployments.apps", cluster.ns, name),
        timeout=TIMEOUT,
        message=f"Deployment {name}",
    )


def template_version(dep: dict[str, Any] | None) -> str | None:
    annotations = (dep or {}).get("spec", {}).get("template", {}).get("metadata", {}).get("annotations", {})
    return annotations.get(VERSION_ANNOTATION)


def wait_template_version(cluster: Cluster, version: str, name: str = STABLE) -> dict[str, Any]:
    return cluster.wait_for(
        lambda: template_version(d := cluster.get("deployments.apps", cluster.ns, name)) == version and d,
        timeout=TIMEOUT,
        message=f"{name} template at {version}",
    )


def _is_ready(pod: dict[str, Any]) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", [])
    )


def _current_pods(cluster: Cluster, name: str) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """The Deployment and the live pods of its current ReplicaSet, once the real Deployment
    controller has observed the latest spec (before that, its revision may still name the old one)."""
    dep = cluster.get("deployments.apps", cluster.ns, name)
    if dep is None or dep.get("status", {}).get("observedGeneration", 0) < dep["metadata"]["generation"]:
        return None
    revision = dep["metadata"].get("annotations", {}).get(REVISION_ANNOTATION)
    selector = ",".join(f"{k}={v}" for k, v in dep["spec"]["selector"]["matchLabels"].items())
    current = [
        rs
        for rs in cluster.list("replicasets.apps", cluster.ns, label_selector=selector)
        if any(o["uid"] == dep["metadata"]["uid"] for o in rs["metadata"].get("ownerReferences", []))
        and rs["metadata"].get("annotations", {}).get(REVISION_ANNOTATION) == revision
    ]
    if len(current) != 1:
        return None
    template_hash = current[0]["metadata"]["labels"]["pod-template-hash"]
    pods = cluster.list("pods", cluster.ns, label_selector=f"{selector},pod-template-hash={template_hash}")
    return dep, [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def ready_pods(cluster: Cluster, name: str = STABLE, count: int | None = None) -> list[dict[str, Any]]:
    """Play the kubelet's readiness prober for the Deployment ``name``: mark each Running pod of its
    current ReplicaSet ready as the real controllers create them (a rolling update with maxSurge 1
    makes them one at a time), until ``count`` (default: spec.replicas) of them are ready."""

    def step() -> list[dict[str, Any]] | None:
        found = _current_pods(cluster, name)
        if found is None:
            return None
        dep, pods = found
        want = dep["spec"]["replicas"] if count is None else count
        ready = [
            pod if _is_ready(pod) else cluster.set_pod_ready(cluster.ns, pod["metadata"]["name"])
            for pod in pods
            if pod.get("status", {}).get("phase") == "Running"
        ]
        return ready if len(ready) >= want else None

    try:
        return cluster.wait_for(step, timeout=60, interval=0.3, message=f"ready pods of {name}")
    except AssertionError as err:
        raise AssertionError(f"{err}\n{_pod_report(cluster, name)}") from None


def _pod_report(cluster: Cluster, name: str) -> str:
    """What the Deployment and its pods look like: for a failed wait's message."""
    dep = cluster.get("deployments.apps", cluster.ns, name) or {}
    generation = dep.get("metadata", {}).get("generation")
    lines = [f"Deployment {name}: generation {generation}, status {dep.get('status')}"]
    for pod in cluster.list("pods", cluster.ns):
        status = pod.get("status", {})
        conditions = {c["type"]: (c["status"], c.get("reason")) for c in status.get("conditions", [])}
        lines.append(
            f"pod {pod['metadata']['name']}: node {pod['spec'].get('nodeName')}, "
            f"phase {status.get('phase')}, conditions {conditions}, "
            f"deleting {bool(pod['metadata'].get('deletionTimestamp'))}"
        )
    for node in cluster.list("nodes"):
        ready = next((c for c in node["status"].get("conditions", []) if c["type"] == "Ready"), {})
        lines.append(f"node {node['metadata']['name']}: Ready {ready.get('status')} ({ready.get('reason')})")
    return "\n".join(lines)


def adep_status(cluster: Cluster, name: str = ADEP) -> dict[str, Any]:
    obj = cluster.get("adep", cluster.ns, name)
    assert obj is not None
    return obj.get("status", {})


def wait_adep(
    cluster: Cluster,
    operator: Operator,
    predicate: Any,
    message: str,
    timeout: float = TIMEOUT,
    name: str = ADEP,
) -> dict[str, Any]:
    """The AdapterDeployment's status once ``predicate`` holds; the operator's log on a timeout."""
    try:
        return cluster.wait_for(
            lambda: (s := adep_status(cluster, name)) and predicate(s) and s, timeout=timeout, message=message
        )
    except AssertionError:
        print(operator.logs()[-6000:])
        raise


def active_version(status: dict[str, Any]) -> str | None:
    return (status.get("activeAdapter") or {}).get("version")


def reasons(cluster: Cluster) -> set[str]:
    return {e["reason"] for e in cluster.events(cluster.ns, ADEP)}
