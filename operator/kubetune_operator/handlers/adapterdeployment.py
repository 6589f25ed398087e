"""AdapterDeployment handlers: judge retrains -> resolve the adapter -> apply server children -> status
from the Deployment -> evaluate drift/accuracy triggers (Prometheus) -> maybe start a retrain."""

from __future__ import annotations

import datetime
import logging
from typing import Any

import aiohttp
import kopf
from pydantic import ValidationError

from kubetune.api.adapterdeployment import (
    AdapterDeployment,
    AdapterDeploymentStatus,
    CanaryStatus,
    RetrainRecord,
)
from kubetune.api.finetunejob import FineTuneJob, FineTuneJobSpec
from kubetune.api.loading import format_validation_error
from kubetune_operator.adapter_status import Unresolved, derive_adapter_status, resolve_adapter
from kubetune_operator.builders.serving import (
    ResolvedAdapter,
    build_deployment,
    build_pdb,
    build_pod_monitor,
    build_serve_config_map,
    build_service,
    server_name,
)
from kubetune_operator.builders.training import build_trainer_service_account
from kubetune_operator.canary import VersionHealth, canary_replicas, compare, health_queries, step_decision
from kubetune_operator.conditions import set_condition, status_patch
from kubetune_operator.handlers.serial import Outcome, serialized
from kubetune_operator.kube import Kube, collection_path
from kubetune_operator.metrics import RETRAINS
from kubetune_operator.prometheus import PrometheusError, query_scalar, trigger_queries
from kubetune_operator.retraining import (
    RETRAIN_REQUESTED,
    Breach,
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
# Event reason -> kubetune_retrains_total outcome (one place, so the counter follows the events).
RETRAIN_OUTCOMES = {
    "Retraining": "Triggered",
    "Promoted": "Promoted",
    "NotBetter": "Rejected",
    "RetrainFailed": "Failed",
}
PROMETHEUS_OPERATOR_API = "/apis/monitoring.coreos.com/v1"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _previous(body: dict[str, Any]) -> AdapterDeploymentStatus:
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
    await _start_retrain(kube, ad, owner, status, breach, readings, events, now)


async def _start_retrain(
    kube: Kube,
    ad: AdapterDeployment,
    owner: dict[str, Any],
    status: AdapterDeploymentStatus,
    breach: Breach,
    readings: Readings,
    events: list[Event],
    now: str,
) -> str | None:
    """Create the retraining FineTuneJob; returns why it could not be started, or None."""
    gen = ad.metadata.generation
    active = status.active_adapter
    if active is None or active.version is None:
        return "no adapter is serving yet"
    template = ad.spec.retraining.template or await _template_from_ref(kube, ad)
    if template is None:
        reason = "no recipe: the referenced FineTuneJob is gone; set retraining.template"
        status.conditions = set_condition(
            status.conditions, "Retraining", "False", "NoTemplate", reason, now, gen
        )
        return reason
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
    return None


async def _manual_retrain(
    kube: Kube,
    ad: AdapterDeployment,
    owner: dict[str, Any],
    status: AdapterDeploymentStatus,
    events: list[Event],
    now: str,
) -> None:
    """Honour `kubetune.dev/retrain-requested` once per value (the Argo CD retrain-now action):
    skips the triggers and the cooldown, keeps the daily budget and the approval mode."""
    requested = (owner.get("metadata", {}).get("annotations") or {}).get(RETRAIN_REQUESTED)
    if not requested or requested == status.last_retrain_request:
        return
    status.last_retrain_request = requested
    blocker = retrain_blocker(ad.spec.retraining, status.retrains, now, manual=True)
    if blocker is None:
        breach = Breach("manual", f"manual request {requested}")
        blocker = await _start_retrain(kube, ad, owner, status, breach, Readings(), events, now)
    if blocker is None:
        return
    events.append(Event("Warning", "RetrainRequestRejected", f"retrain request {requested}: {blocker}"))
    if not any(r.outcome in ("Pending", "Running") for r in status.retrains):  # never hide a running retrain
        status.conditions = set_condition(
            status.conditions,
            "Retraining",
            "False",
            "RetrainRequestRejected",
            f"retrain request {requested} not started: {blocker}",
            now,
            ad.metadata.generation,
        )


async def _apply_stable(
    kube: Kube,
    ad: AdapterDeployment,
    owner: dict[str, Any],
    adapter: ResolvedAdapter,
    settings: OperatorSettings,
) -> dict[str, Any]:
    config_map = build_serve_config_map(ad, owner, adapter)
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
        )
    )


def _champion(status: AdapterDeploymentStatus, task: Any) -> ResolvedAdapter | None:
    """The version serving now, as a ResolvedAdapter (None before the first rollout)."""
    active = status.active_adapter
    if active is None or active.version is None or active.uri is None:
        return None
    return ResolvedAdapter(
        active.version, active.uri, task, active.digest, active.fine_tune_job, active.accuracy
    )


def _canary_message(ad: AdapterDeployment, status: AdapterDeploymentStatus) -> str:
    canary = status.canary
    assert canary is not None
    steps = len(ad.spec.rollout.steps)
    waiting = (
        "pods starting" if canary.step_started_at is None else f"watching since {canary.step_started_at}"
    )
    return f"canary {canary.version}: step {canary.step + 1}/{steps}, {canary.weight}% of pods, {waiting}"


async def _drop_canary(kube: Kube, ad: AdapterDeployment, status: AdapterDeploymentStatus) -> None:
    path = (
        f"{collection_path('apps/v1', 'Deployment', ad.metadata.namespace or 'default')}/"
        f"{server_name(ad.metadata.name, 'canary')}"
    )
    if await kube.get(path) is not None:
        await kube.delete(path)
    status.canary = None


async def _version_health(ad: AdapterDeployment, version: str, window: int) -> VersionHealth:
    url = ad.spec.monitoring.prometheus_url
    if url is None:
        return VersionHealth()
    queries = health_queries(ad.metadata.name, version, window, ad.spec.monitoring.drift.kind)
    async with aiohttp.ClientSession() as session:
        values = {k: await query_scalar(session, url, q) for k, q in queries.items()}
    return VersionHealth(**values)


async def _run_canary(
    kube: Kube,
    ad: AdapterDeployment,
    owner: dict[str, Any],
    status: AdapterDeploymentStatus,
    champion: ResolvedAdapter,
    candidate: ResolvedAdapter,
    settings: OperatorSettings,
    events: list[Event],
    now: str,
) -> tuple[dict[str, Any], bool]:
    """One canary pass: keep the champion serving, size the canary, judge a finished step.

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
    stable = await _apply_stable(kube, ad, owner, champion, settings)
    replicas = canary_replicas(ad.spec.replicas, canary.weight)
    config_map = build_serve_config_map(ad, owner, candidate, "canary")
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
            reason = compare(
                await _version_health(ad, champion.version, window),
                await _version_health(ad, canary.version, window),
                ad.spec.monitoring.drift.threshold,
            )
        except PrometheusError as err:
            return stable, _hold(status, f"canary judgement postponed: {err}", now, gen)
    if reason is not None:
        await _drop_canary(kube, ad, status)
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
    await _drop_canary(kube, ad, status)
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


async def _template_from_ref(kube: Kube, ad: AdapterDeployment) -> FineTuneJobSpec | None:
    if ad.spec.adapter.fine_tune_job_ref is None:
        return None
    body = await kube.get(
        _ftj_path(ad.metadata.namespace or "default", ad.spec.adapter.fine_tune_job_ref.name)
    )
    return FineTuneJob.model_validate(body).spec if body is not None else None


async def _serve(
    kube: Kube,
    ad: AdapterDeployment,
    owner: dict[str, Any],
    draft: AdapterDeploymentStatus,
    resolved: ResolvedAdapter,
    settings: OperatorSettings,
    events: list[Event],
    now: str,
) -> tuple[ResolvedAdapter, dict[str, Any], str | None]:
    """Apply the serving children. Returns (version on the stable track, its Deployment, canary message)."""
    namespace = ad.metadata.namespace or "default"
    await kube.ensure(build_trainer_service_account(namespace, settings.trainer_service_account))
    await kube.apply(build_service(ad, owner))
    await kube.apply(build_pdb(ad, owner))
    if await kube.exists(PROMETHEUS_OPERATOR_API):
        await kube.apply(build_pod_monitor(ad, owner))
    champion = _champion(draft, resolved.task)
    if champion is not None and resolved.version in draft.rolled_back:
        resolved = champion  # a version a canary rejected is never rolled out again
    passed = (
        champion is not None
        and champion.version != resolved.version
        and draft.canary is not None
        and draft.canary.version == resolved.version
        and draft.canary.step >= len(ad.spec.rollout.steps)
    )
    if passed:  # every step passed: the stable track rolls to it; the record goes once it serves
        return resolved, await _apply_stable(kube, ad, owner, resolved, settings), None
    if (
        ad.spec.rollout.strategy != "Canary"
        or champion is None
        or resolved.version == champion.version
        or ad.spec.adapter.version is not None
    ):  # a pinned version (rollback) goes out at once
        await _drop_canary(kube, ad, draft)
        return resolved, await _apply_stable(kube, ad, owner, resolved, settings), None
    stable, promoted = await _run_canary(kube, ad, owner, draft, champion, resolved, settings, events, now)
    if promoted:
        return resolved, await _apply_stable(kube, ad, owner, resolved, settings), None
    message = _canary_message(ad, draft) if draft.canary is not None else None
    return champion, stable, message


def _invalid(body: dict[str, Any], prev: AdapterDeploymentStatus, err: ValidationError, now: str) -> Outcome:
    message = format_validation_error(err)
    gen = body["metadata"].get("generation")
    status = prev.model_copy(update={"phase": "Degraded", "message": message, "observed_generation": gen})
    status.conditions = set_condition(status.conditions, "Ready", "False", "InvalidSpec", message, now, gen)
    if status == prev:
        return Outcome()
    return Outcome(status_patch(prev.wire(), status.wire()), [Event("Warning", "InvalidSpec", message)])


async def reconcile_adapter(body: dict[str, Any], memo: kopf.Memo, logger: logging.Logger) -> Outcome:
    """Level-based: run on create/update/resume and on every resync tick."""
    kube: Kube = memo.kube
    settings: OperatorSettings = memo.settings
    prev = _previous(body)
    now = _now()
    try:
        ad = AdapterDeployment.model_validate(body)
    except ValidationError as err:
        return _invalid(body, prev, err, now)
    draft = prev.model_copy(deep=True)
    events: list[Event] = []
    await _judge_retrains(kube, ad, draft, events, now)

    ref = ad.spec.adapter.fine_tune_job_ref
    source = draft.promoted or (ref.name if ref else None)
    ftj = await kube.get(_ftj_path(ad.metadata.namespace or "default", source)) if source else None
    active = draft.active_adapter.version if draft.active_adapter else None
    resolved = resolve_adapter(ad, ftj, draft.history, active, draft.promoted)
    deployment, canary_message = None, None
    if not isinstance(resolved, Unresolved):
        resolved, deployment, canary_message = await _serve(
            kube, ad, body, draft, resolved, settings, events, now
        )
    new, rollout_events = derive_adapter_status(ad, resolved, deployment, draft, now)
    events += rollout_events
    if canary_message is not None:
        gen = ad.metadata.generation
        new.phase, new.message = "Progressing", canary_message
        new.conditions = set_condition(
            new.conditions, "Progressing", "True", "Canary", canary_message, now, gen
        )
    if _monitoring_due(ad, new, now):
        await _monitor(kube, ad, body, new, events, now, logger)
    await _manual_retrain(kube, ad, body, new, events, now)
    for event in events:
        if event.reason in RETRAIN_OUTCOMES:
            RETRAINS.labels(ad.metadata.namespace, ad.metadata.name, RETRAIN_OUTCOMES[event.reason]).inc()
    return Outcome(status_patch(prev.wire(), new.wire()) if new != prev else None, events)


def register(registry: kopf.OperatorRegistry, settings: OperatorSettings) -> None:
    handler = serialized(reconcile_adapter)
    kopf.on.create(*RESOURCE, registry=registry, id="reconcile-create")(handler)
    kopf.on.resume(*RESOURCE, registry=registry, id="reconcile-resume")(handler)
    kopf.on.update(*RESOURCE, field="spec", registry=registry, id="reconcile-update")(handler)
    kopf.timer(*RESOURCE, interval=settings.resync_seconds, registry=registry, id="resync")(handler)
