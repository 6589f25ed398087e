"""AdapterDeployment handlers: judge retrains -> resolve the adapter -> apply server children -> status
from the Deployment -> evaluate drift/accuracy triggers (Prometheus) -> maybe start a retrain."""

from __future__ import annotations

import datetime
import logging
from typing import Any

import aiohttp
import kopf
from pydantic import ValidationError

from kubetune.api.adapterdeployment import AdapterDeployment, AdapterDeploymentStatus, RetrainRecord
from kubetune.api.finetunejob import FineTuneJob, FineTuneJobSpec
from kubetune.api.loading import format_validation_error
from kubetune_operator.adapter_status import Unresolved, derive_adapter_status, resolve_adapter
from kubetune_operator.builders.serving import (
    build_deployment,
    build_pdb,
    build_pod_monitor,
    build_serve_config_map,
    build_service,
)
from kubetune_operator.builders.training import build_trainer_service_account
from kubetune_operator.conditions import set_condition
from kubetune_operator.kube import Kube, collection_path
from kubetune_operator.prometheus import PrometheusError, query_scalar, trigger_queries
from kubetune_operator.retraining import (
    Readings,
    build_retrain_job,
    find_breach,
    judge,
    retrain_blocker,
    retrain_name,
)
from kubetune_operator.settings import OperatorSettings
from kubetune_operator.status import Event

RESOURCE = ("kubetune.dev", "v1alpha1", "adapterdeployments")
PROMETHEUS_OPERATOR_API = "/apis/monitoring.coreos.com/v1"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _previous(body: kopf.Body) -> AdapterDeploymentStatus:
    try:
        return AdapterDeploymentStatus.model_validate(dict(body.get("status") or {}))
    except ValidationError:
        return AdapterDeploymentStatus()


def _ftj_path(namespace: str, name: str) -> str:
    return f"{collection_path('kubetune.dev/v1alpha1', 'FineTuneJob', namespace)}/{name}"


async def _judge_retrains(
    kube: Kube, ad: AdapterDeployment, status: AdapterDeploymentStatus, events: list[Event], now: str
) -> None:
    """Move running retrain records forward; a challenger that beats the champion is promoted."""
    for record in status.retrains:
        if record.outcome not in ("Pending", "Running"):
            continue
        body = await kube.get(_ftj_path(ad.metadata.namespace or "default", record.fine_tune_job))
        if body is None:
            record.outcome = "Failed"
            events.append(
                Event("Warning", "RetrainFailed", f"retraining FineTuneJob {record.fine_tune_job} vanished")
            )
            continue
        job = FineTuneJob.model_validate(body)
        outcome, challenger, champion = judge(
            job.status, job.spec.gate_metric, ad.spec.retraining.min_improvement
        )
        record.outcome, record.challenger, record.champion = outcome, challenger, champion
        gen = ad.metadata.generation
        text = f"{record.fine_tune_job}: challenger {challenger} vs champion {champion}"
        if outcome == "Promoted":
            status.promoted = record.fine_tune_job
            status.conditions = set_condition(
                status.conditions, "Promoted", "True", "BeatChampion", text, now, gen
            )
            status.conditions = set_condition(
                status.conditions, "Retraining", "False", "Promoted", text, now, gen
            )
            events.append(Event("Normal", "Promoted", text))
        elif outcome in ("Rejected", "Failed"):
            reason = "NotBetter" if outcome == "Rejected" else "RetrainFailed"
            detail = text if outcome == "Rejected" else f"{record.fine_tune_job} failed: {job.status.message}"
            status.conditions = set_condition(
                status.conditions, "Promoted", "False", reason, detail, now, gen
            )
            status.conditions = set_condition(
                status.conditions, "Retraining", "False", reason, detail, now, gen
            )
            events.append(Event("Warning", reason, detail))


async def _read_triggers(ad: AdapterDeployment, version: str) -> Readings:
    monitoring = ad.spec.monitoring
    assert monitoring.prometheus_url is not None
    q = trigger_queries(monitoring, ad.metadata.name, version)
    async with aiohttp.ClientSession() as session:
        values = [
            await query_scalar(session, monitoring.prometheus_url, expr)
            for expr in (
                q.drift_now,
                q.drift_sustained,
                q.window,
                q.accuracy_now,
                q.accuracy_sustained,
                q.feedback,
            )
        ]
    return Readings(*values)


def _monitoring_due(ad: AdapterDeployment, status: AdapterDeploymentStatus, now: str) -> bool:
    if ad.spec.monitoring.prometheus_url is None or status.active_adapter is None:
        return False
    if status.last_evaluated is None:
        return True
    elapsed = datetime.datetime.fromisoformat(now.replace("Z", "+00:00")) - datetime.datetime.fromisoformat(
        status.last_evaluated.replace("Z", "+00:00")
    )
    return elapsed.total_seconds() >= ad.spec.monitoring.interval_seconds


async def _monitor(
    kube: Kube,
    ad: AdapterDeployment,
    owner: dict[str, Any],
    status: AdapterDeploymentStatus,
    events: list[Event],
    now: str,
    logger: logging.Logger,
) -> None:
    """Evaluate the triggers against Prometheus; on a sustained breach start one retraining job."""
    active = status.active_adapter
    assert active is not None and active.version is not None
    gen = ad.metadata.generation
    try:
        readings = await _read_triggers(ad, active.version)
    except PrometheusError as err:
        status.conditions = set_condition(
            status.conditions, "Monitoring", "False", "PrometheusUnavailable", str(err)[:500], now, gen
        )
        return
    status.conditions = set_condition(
        status.conditions,
        "Monitoring",
        "True",
        "Evaluated",
        f"triggers evaluated for {active.version}",
        now,
        gen,
    )
    status.drift, status.accuracy, status.last_evaluated = readings.drift, readings.accuracy, now
    breach = find_breach(ad.spec.monitoring, readings)
    drifted = breach is not None
    status.conditions = set_condition(
        status.conditions,
        "Drifted",
        "True" if drifted else "False",
        breach.kind.capitalize() + "Breach" if breach else "WithinThresholds",
        breach.message if breach else "drift and accuracy within thresholds",
        now,
        gen,
    )
    if breach is None:
        return
    blocker = retrain_blocker(ad.spec.retraining, status.retrains, now)
    if blocker is not None:
        logger.info("breach (%s) but no retrain: %s", breach.message, blocker)
        return
    template = ad.spec.retraining.template or await _template_from_ref(kube, ad)
    if template is None:
        status.conditions = set_condition(
            status.conditions,
            "Retraining",
            "False",
            "NoTemplate",
            "the referenced FineTuneJob is gone; set retraining.template",
            now,
            gen,
        )
        return
    name = retrain_name(ad.metadata.name, active.version, status.retrains)
    job = build_retrain_job(ad, owner, template, active, breach, readings, name, now)
    _, created = await kube.ensure(job)
    status.retrains = [
        *status.retrains,
        RetrainRecord(fine_tune_job=name, created_at=now, trigger=breach.message),
    ][-10:]
    approval = (
        "waiting for approval (resume it: spec.suspend=false)" if job["spec"].get("suspend") else "training"
    )
    status.conditions = set_condition(
        status.conditions, "Retraining", "True", "Triggered", f"{name} {approval}: {breach.message}", now, gen
    )
    if created:
        events.append(Event("Warning", "Retraining", f"created FineTuneJob {name}: {breach.message}"))


async def _template_from_ref(kube: Kube, ad: AdapterDeployment) -> FineTuneJobSpec | None:
    if ad.spec.adapter.fine_tune_job_ref is None:
        return None
    body = await kube.get(
        _ftj_path(ad.metadata.namespace or "default", ad.spec.adapter.fine_tune_job_ref.name)
    )
    return FineTuneJob.model_validate(body).spec if body is not None else None


async def reconcile_adapter(
    body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: logging.Logger, **_: Any
) -> None:
    """Level-based: run on create/update/resume and on every resync tick."""
    kube: Kube = memo.kube
    settings: OperatorSettings = memo.settings
    prev = _previous(body)
    now = _now()
    try:
        ad = AdapterDeployment.model_validate(dict(body))
    except ValidationError as err:
        message = format_validation_error(err)
        status = prev.model_copy(
            update={
                "phase": "Degraded",
                "message": message,
                "observed_generation": body["metadata"].get("generation"),
            }
        )
        status.conditions = set_condition(
            status.conditions, "Ready", "False", "InvalidSpec", message, now, status.observed_generation
        )
        if status != prev:
            patch.status.update(status.wire())
            kopf.event(body, type="Warning", reason="InvalidSpec", message=message)
        return
    namespace = body["metadata"]["namespace"]
    owner = dict(body)
    draft = prev.model_copy(deep=True)
    events: list[Event] = []
    await _judge_retrains(kube, ad, draft, events, now)

    source = draft.promoted or (
        ad.spec.adapter.fine_tune_job_ref.name if ad.spec.adapter.fine_tune_job_ref else None
    )
    ftj = await kube.get(_ftj_path(namespace, source)) if source else None
    active = draft.active_adapter.version if draft.active_adapter else None
    resolved = resolve_adapter(ad, ftj, draft.history, active, draft.promoted)
    deployment = None
    if not isinstance(resolved, Unresolved):
        await kube.ensure(build_trainer_service_account(namespace, settings.trainer_service_account))
        config_map = build_serve_config_map(ad, owner, resolved)
        await kube.apply(config_map, fields=("data",))
        await kube.apply(build_service(ad, owner))
        await kube.apply(build_pdb(ad, owner))
        if await kube.exists(PROMETHEUS_OPERATOR_API):
            await kube.apply(build_pod_monitor(ad, owner))
        deployment = await kube.apply(
            build_deployment(
                ad,
                owner,
                resolved,
                config_map,
                settings.server_image,
                settings.image_pull_policy,
                settings.trainer_service_account,
            )
        )
    new, rollout_events = derive_adapter_status(ad, resolved, deployment, draft, now)
    events += rollout_events
    if _monitoring_due(ad, new, now):
        await _monitor(kube, ad, owner, new, events, now, logger)
    if new != prev:
        patch.status.update(new.wire())
    for event in events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)


def register(registry: kopf.OperatorRegistry, settings: OperatorSettings) -> None:
    kopf.on.create(*RESOURCE, registry=registry, id="reconcile-create")(reconcile_adapter)
    kopf.on.resume(*RESOURCE, registry=registry, id="reconcile-resume")(reconcile_adapter)
    kopf.on.update(*RESOURCE, field="spec", registry=registry, id="reconcile-update")(reconcile_adapter)
    kopf.timer(*RESOURCE, interval=settings.resync_seconds, registry=registry, id="resync")(reconcile_adapter)
