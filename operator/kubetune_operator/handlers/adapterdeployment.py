"""AdapterDeployment handlers: judge retrains -> resolve the adapter -> apply server children (rolling or
canary) -> status from the Deployment -> evaluate drift/accuracy triggers -> maybe start a retrain."""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import kopf
from pydantic import ValidationError

from kubetune.api.adapterdeployment import AdapterDeployment
from kubetune.api.adapterdeployment_status import AdapterDeploymentStatus
from kubetune.api.loading import format_validation_error
from kubetune_operator.adapter_history import gate_applies, record_skip, shortfall
from kubetune_operator.adapter_status import (
    Unresolved,
    derive_adapter_status,
    resolve_adapter,
    resolve_extra_tasks,
)
from kubetune_operator.builders.serving import (
    ResolvedAdapter,
    ResolvedTask,
    build_pdb,
    build_pod_monitor,
    build_service,
    loads_in_place,
)
from kubetune_operator.builders.training import build_trainer_service_account
from kubetune_operator.conditions import set_condition, status_patch
from kubetune_operator.handlers.autoscaler import reconcile_autoscaler
from kubetune_operator.handlers.loop import ftj_path, judge_retrains, manual_retrain, monitor, monitoring_due
from kubetune_operator.handlers.outcome import Outcome
from kubetune_operator.handlers.rollout import (
    apply_stable,
    canary_message,
    champion_of,
    drop_canary,
    pods_serving,
    run_canary,
)
from kubetune_operator.kube import Kube
from kubetune_operator.metrics import RETRAINS
from kubetune_operator.placement import placement_problem
from kubetune_operator.retraining import COUNTED_EVENTS
from kubetune_operator.settings import OperatorSettings
from kubetune_operator.status import Event

RESOURCE = ("kubetune.dev", "v1alpha1", "adapterdeployments")
if TYPE_CHECKING:
    from kubetune_operator.controller import Controller

PROMETHEUS_OPERATOR_API = "/apis/monitoring.coreos.com/v1"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _previous(body: dict[str, Any]) -> AdapterDeploymentStatus:
    try:
        return AdapterDeploymentStatus.model_validate(dict(body.get("status") or {}))
    except ValidationError:
        return AdapterDeploymentStatus()


async def serve(
    kube: Kube,
    ad: AdapterDeployment,
    owner: dict[str, Any],
    draft: AdapterDeploymentStatus,
    resolved: ResolvedAdapter,
    settings: OperatorSettings,
    events: list[Event],
    now: str,
    extras: Sequence[ResolvedTask] = (),
) -> tuple[ResolvedAdapter, dict[str, Any], str | None]:
    """Apply the serving children. Returns (version on the stable track, its Deployment, canary message).

    The rollout strategy governs the primary adapter; every pod of both tracks serves ``extras``."""
    namespace = ad.metadata.namespace or "default"
    await kube.ensure(build_trainer_service_account(namespace, settings.trainer_service_account))
    champion = champion_of(draft, resolved.task)
    if champion is not None and resolved.version in draft.rolled_back:
        resolved = champion  # a version a canary rejected is never rolled out again
    if (
        champion is not None
        and gate_applies(ad, resolved, champion, draft.promoted)
        and (reason := shortfall(resolved, champion)) is not None
    ):  # rollout.requireImprovement: a worse new run is recorded, the serving version stays
        skipped = record_skip(draft.history, resolved, reason, now)
        if skipped is not None:
            draft.history = skipped
            events.append(Event("Normal", "RolloutSkipped", f"{resolved.version} {reason}"))
        resolved = champion
    passed = (
        champion is not None
        and champion.version != resolved.version
        and draft.canary is not None
        and draft.canary.version == resolved.version
        and draft.canary.step >= len(ad.spec.rollout.steps)
    )
    if passed:  # every step passed: the stable track rolls to it; the record goes once it serves
        return resolved, await apply_stable(kube, ad, owner, resolved, settings, extras), None
    if (
        ad.spec.rollout.strategy != "Canary"
        or champion is None
        or resolved.version == champion.version
        or ad.spec.adapter.version is not None
    ):  # a pinned version (rollback) goes out at once
        await drop_canary(kube, ad, draft)
        return resolved, await apply_stable(kube, ad, owner, resolved, settings, extras), None
    stable, promoted = await run_canary(
        kube, ad, owner, draft, champion, resolved, settings, events, now, extras
    )
    if promoted:
        return resolved, await apply_stable(kube, ad, owner, resolved, settings, extras), None
    message = canary_message(ad, draft) if draft.canary is not None else None
    return champion, stable, message


async def apply_around(kube: Kube, ad: AdapterDeployment, owner: dict[str, Any]) -> None:
    """The Service, PDB and PodMonitor around the serving pods, at once. Applied after the
    Deployments, which are what a new AdapterDeployment waits for."""

    async def pod_monitor() -> None:
        if await kube.exists(PROMETHEUS_OPERATOR_API):
            await kube.apply(build_pod_monitor(ad, owner))

    await asyncio.gather(
        kube.apply(build_service(ad, owner)), kube.apply(build_pdb(ad, owner)), pod_monitor()
    )


def _placement_refused(ad: AdapterDeployment, settings: OperatorSettings) -> str | None:
    """The serving pods' placement, and the retraining template's before any retrain is created."""
    res, template = ad.spec.resources, ad.spec.retraining.template
    policy = settings.placement
    problem = placement_problem(res.priority_class_name, res.tolerations, res.node_selector, policy)
    if problem is None and template is not None:
        t = template.resources
        where = "spec.retraining.template.resources"
        problem = placement_problem(t.priority_class_name, t.tolerations, t.node_selector, policy, where)
    return problem


def _invalid(body: dict[str, Any], prev: AdapterDeploymentStatus, message: str, now: str) -> Outcome:
    gen = body["metadata"].get("generation")
    status = prev.model_copy(update={"phase": "Degraded", "message": message, "observed_generation": gen})
    status.conditions = set_condition(status.conditions, "Ready", "False", "InvalidSpec", message, now, gen)
    if status == prev:
        return Outcome()
    return Outcome(status_patch(prev.wire(), status.wire()), [Event("Warning", "InvalidSpec", message)])


async def reconcile_adapter(body: dict[str, Any], ctl: Controller, logger: logging.Logger) -> Outcome:
    """Level-based: run when it, its Deployments or its FineTuneJobs change, and every
    adapterResyncSeconds (canary pauses and trigger checks are timed)."""
    kube: Kube = ctl.kube
    settings: OperatorSettings = ctl.settings
    prev = _previous(body)
    now = _now()
    try:
        ad = AdapterDeployment.model_validate(body)
    except ValidationError as err:
        return _invalid(body, prev, format_validation_error(err), now)
    refused = _placement_refused(ad, settings)
    if refused is not None:
        return _invalid(body, prev, refused, now)
    draft = prev.model_copy(deep=True)
    events: list[Event] = []
    await judge_retrains(kube, ad, draft, events, now)

    ref = ad.spec.adapter.fine_tune_job_ref
    source = draft.promoted or (ref.name if ref else None)
    ftj = await kube.get(ftj_path(ad.metadata.namespace or "default", source)) if source else None
    active = draft.active_adapter.version if draft.active_adapter else None
    resolved = resolve_adapter(ad, ftj, draft.history, active, draft.promoted)
    extras = await _resolve_extras(kube, ad, draft)
    if isinstance(extras, Unresolved) and not isinstance(resolved, Unresolved):
        resolved = extras  # one URL serves every task: nothing changes until all of them resolve
    deployment, canary_note, serving = None, None, None
    if not isinstance(resolved, Unresolved) and not isinstance(extras, Unresolved):
        resolved, deployment, canary_note = await serve(
            kube, ad, body, draft, resolved, settings, events, now, extras
        )
        await apply_around(kube, ad, body)
        active = draft.active_adapter.version if draft.active_adapter else None
        if loads_in_place(ad, "stable") and resolved.version != active:  # the pods say when it serves
            serving = await pods_serving(kube, ad, resolved.version)
    served = () if isinstance(extras, Unresolved) else extras
    new, rollout_events = derive_adapter_status(ad, resolved, deployment, draft, now, served, serving)
    events += rollout_events
    if canary_note is not None:
        gen = ad.metadata.generation
        new.phase, new.message = "Progressing", canary_note
        new.conditions = set_condition(new.conditions, "Progressing", "True", "Canary", canary_note, now, gen)
    await reconcile_autoscaler(kube, ad, body, new, events, now)
    if monitoring_due(ad, new, now):
        await monitor(kube, ad, body, new, events, now, logger)
    await manual_retrain(kube, ad, body, new, events, now)
    for event in events:
        if event.reason in COUNTED_EVENTS:  # the counter follows the events (retraining.JUDGED)
            RETRAINS.labels(ad.metadata.namespace, ad.metadata.name, COUNTED_EVENTS[event.reason]).inc()
    # No event tells us a pod picked the version up (or that a stalled load went through at last):
    # look again soon until it serves.
    again = settings.adapter_resync_seconds if serving is not None and new.phase != "Available" else None
    return Outcome(status_patch(prev.wire(), new.wire()) if new != prev else None, events, again)


async def _resolve_extras(
    kube: Kube, ad: AdapterDeployment, draft: AdapterDeploymentStatus
) -> list[ResolvedTask] | Unresolved:
    namespace = ad.metadata.namespace or "default"
    names = {t.adapter.fine_tune_job_ref.name for t in ad.spec.extra_tasks if t.adapter.fine_tune_job_ref}
    ftjs = {name: await kube.get(ftj_path(namespace, name)) for name in sorted(names)}
    return resolve_extra_tasks(ad, ftjs, draft.extra_tasks)


def register(registry: kopf.OperatorRegistry, ctl_of: Callable[[kopf.Memo], Controller]) -> None:
    @kopf.on.event(*RESOURCE, registry=registry, id="adapterdeployment-changed")
    async def changed(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **kw: Any) -> None:
        ctl = ctl_of(memo)
        ctl.bind(kw)
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        if event.get("type") == "DELETED":
            ctl.forget_adapter(key)
        else:
            ctl.adapter_seen(key, dict(body))
