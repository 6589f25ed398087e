"""Rolling and canary rollouts of an AdapterDeployment's serving Deployments."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import aiohttp
from kubetune_trainer.serve.served_report import last_report

from kubetune.api.adapterdeployment import AdapterDeployment
from kubetune.api.adapterdeployment_status import AdapterDeploymentStatus, CanaryStatus
from kubetune_operator.builders.serving import (
    SERVER_CONTAINER,
    ResolvedAdapter,
    ResolvedTask,
    build_deployment,
    build_serve_config_map,
    scale_selector,
    server_name,
)
from kubetune_operator.canary import (
    VersionHealth,
    canary_replicas,
    compare,
    evidence_overdue,
    health_queries,
    step_decision,
)
from kubetune_operator.conditions import set_condition
from kubetune_operator.in_place_load import InPlaceLoad
from kubetune_operator.kube import Kube, collection_path, object_path
from kubetune_operator.prometheus import PrometheusError, query_scalar
from kubetune_operator.settings import OperatorSettings
from kubetune_operator.status import Event


async def apply_stable(
    kube: Kube,
    ad: AdapterDeployment,
    owner: dict[str, Any],
    adapter: ResolvedAdapter,
    settings: OperatorSettings,
    extras: Sequence[ResolvedTask] = (),
) -> dict[str, Any]:
    config_map = build_serve_config_map(ad, owner, adapter, extras=extras)
    await kube.apply(config_map, fields=("data",))
    return await kube.apply(
        build_deployment(
            ad,
            owner,
            adapter,
            config_map,
            settings.server_image,
            settings.image_pull_policy,
            settings.trainer_service_account,
            extras=extras,
        )
    )


SERVED_TAIL = 200  # log lines read per pod: the serving line is logged once per change, and rarely buried


def _ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    live = not pod["metadata"].get("deletionTimestamp")
    return live and any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


async def pods_serving(kube: Kube, ad: AdapterDeployment, version: str) -> InPlaceLoad:
    """How many ready pods of the stable track say, in their kubetune container's log, that requests
    to the adapter reach ``version`` (builders.serving.loads_in_place: their template cannot say),
    and why the others' engines failed to load it, where they logged that."""
    namespace = ad.metadata.namespace or "default"
    pods = await kube.list(collection_path("v1", "Pod", namespace), scale_selector(ad))
    names = [pod["metadata"]["name"] for pod in pods if _ready(pod)]
    tails = await asyncio.gather(
        *(kube.pod_log(namespace, name, SERVER_CONTAINER, SERVED_TAIL) for name in names)
    )
    want = f"{ad.metadata.name}@{version}"
    serving, failures = 0, []
    for name, tail in zip(names, tails, strict=True):
        report = last_report(tail)
        if report is not None and report.aliases.get(ad.metadata.name) == want:
            serving += 1
        elif report is not None and want in report.failed:
            failures.append(f"pod {name}: {report.failed[want]}")
    return InPlaceLoad(serving, tuple(failures))


def champion_of(status: AdapterDeploymentStatus, task: Any) -> ResolvedAdapter | None:
    """The version serving now, as a ResolvedAdapter (None before the first rollout)."""
    active = status.active_adapter
    if active is None or active.version is None or active.uri is None:
        return None
    return ResolvedAdapter(
        active.version, active.uri, task, active.digest, active.fine_tune_job, active.accuracy
    )


def canary_message(ad: AdapterDeployment, status: AdapterDeploymentStatus) -> str:
    canary = status.canary
    assert canary is not None
    steps = len(ad.spec.rollout.steps)
    waiting = (
        "pods starting" if canary.step_started_at is None else f"watching since {canary.step_started_at}"
    )
    return f"canary {canary.version}: step {canary.step + 1}/{steps}, {canary.weight}% of pods, {waiting}"


async def drop_canary(kube: Kube, ad: AdapterDeployment, status: AdapterDeploymentStatus) -> None:
    canary = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "namespace": ad.metadata.namespace or "default",
            "name": server_name(ad.metadata.name, "canary"),
        },
    }
    if await kube.peek(canary) is not None:  # the watch knows whether one is there
        await kube.delete(object_path(canary))
    status.canary = None


async def _version_health(ad: AdapterDeployment, version: str, window: int) -> VersionHealth:
    url = ad.spec.monitoring.prometheus_url
    if url is None:
        return VersionHealth()
    queries = health_queries(ad.metadata.name, version, window, ad.spec.monitoring.drift.kind)
    async with aiohttp.ClientSession() as session:
        values = {k: await query_scalar(session, url, q) for k, q in queries.items()}
    return VersionHealth(**values)


async def run_canary(
    kube: Kube,
    ad: AdapterDeployment,
    owner: dict[str, Any],
    status: AdapterDeploymentStatus,
    champion: ResolvedAdapter,
    candidate: ResolvedAdapter,
    settings: OperatorSettings,
    events: list[Event],
    now: str,
    extras: Sequence[ResolvedTask] = (),
) -> tuple[dict[str, Any], bool]:
    """One canary pass: keep the champion serving, size the canary, judge a finished step. Both
    tracks serve the same extra tasks (the canary judges the primary adapter only).

    Returns (stable Deployment, promoted?)."""
    gen = ad.metadata.generation
    canary = status.canary
    if canary is None or canary.version != candidate.version:
        canary = CanaryStatus(
            version=candidate.version,
            uri=candidate.uri,
            digest=candidate.digest,
            fine_tune_job=candidate.fine_tune_job,
            accuracy=candidate.accuracy,
            step=0,
            weight=ad.spec.rollout.steps[0].weight,
        )
        events.append(
            Event("Normal", "CanaryStarted", f"canary {candidate.version} on {canary.weight}% of pods")
        )
    stable = await apply_stable(kube, ad, owner, champion, settings, extras)
    replicas = canary_replicas(ad.spec.replicas, canary.weight)
    config_map = build_serve_config_map(ad, owner, candidate, "canary", extras)
    await kube.apply(config_map, fields=("data",))
    deployment = await kube.apply(
        build_deployment(
            ad,
            owner,
            candidate,
            config_map,
            settings.server_image,
            settings.image_pull_policy,
            settings.trainer_service_account,
            track="canary",
            replicas=replicas,
            extras=extras,
        )
    )
    ds = deployment.get("status", {})
    ready = int(ds.get("readyReplicas") or 0) >= replicas and int(ds.get("updatedReplicas") or 0) >= replicas
    if ready and canary.step_started_at is None:
        canary.step_started_at = now
    status.canary = canary
    decision = step_decision(ad, canary, ready, deployment["metadata"].get("creationTimestamp") or now, now)
    if decision == "wait":
        return stable, False
    reason = "canary pods never became ready" if decision == "rollback-unready" else None
    if reason is None:
        try:
            window = ad.spec.rollout.steps[canary.step].pause_seconds
            candidate_health = await _version_health(ad, canary.version, window)
            if (
                ad.spec.monitoring.prometheus_url
                and candidate_health == VersionHealth()
                and not evidence_overdue(ad, canary, now)
            ):
                return (
                    stable,
                    False,
                )  # no series for the canary yet (no scrape, no traffic): wait for evidence
            reason = compare(
                await _version_health(ad, champion.version, window),
                candidate_health,
                ad.spec.monitoring.drift.threshold,
            )
        except PrometheusError as err:
            return stable, _hold(status, f"canary judgement postponed: {err}", now, gen)
    if reason is not None:
        await drop_canary(kube, ad, status)
        status.rolled_back = [*status.rolled_back, candidate.version][-10:]
        status.conditions = set_condition(
            status.conditions, "RolledBack", "True", "CanaryWorse", f"{candidate.version}: {reason}", now, gen
        )
        events.append(Event("Warning", "RolledBack", f"canary {candidate.version} rolled back: {reason}"))
        return stable, False
    if canary.step + 1 < len(ad.spec.rollout.steps):
        canary.step += 1
        canary.weight = ad.spec.rollout.steps[canary.step].weight
        canary.step_started_at = None
        events.append(
            Event("Normal", "CanaryStep", f"canary {candidate.version} to {canary.weight}% of pods")
        )
        return stable, False
    await drop_canary(kube, ad, status)
    canary.step, canary.weight, canary.step_started_at = len(ad.spec.rollout.steps), 100, None
    status.canary = canary  # remembered as passed until the stable track serves it
    status.conditions = set_condition(
        status.conditions,
        "RolledBack",
        "False",
        "CanaryPassed",
        f"{candidate.version} passed every canary step",
        now,
        gen,
    )
    events.append(
        Event("Normal", "CanaryPassed", f"canary {candidate.version} passed; rolling it out to all pods")
    )
    return stable, True


def _hold(status: AdapterDeploymentStatus, message: str, now: str, gen: int | None) -> bool:
    status.conditions = set_condition(
        status.conditions, "Monitoring", "False", "PrometheusUnavailable", message[:500], now, gen
    )
    return False
