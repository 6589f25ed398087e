"""The AdapterDeployment's closed loop: judge running retrains, evaluate drift/accuracy triggers in
Prometheus, start a retraining FineTuneJob (on a breach or a retrain-now request)."""

from __future__ import annotations

import datetime
import logging
from typing import Any

import aiohttp

from kubetune.api.adapterdeployment import AdapterDeployment
from kubetune.api.adapterdeployment_status import AdapterDeploymentStatus, RetrainRecord
from kubetune.api.finetunejob import FineTuneJob, FineTuneJobSpec
from kubetune_operator.conditions import set_condition
from kubetune_operator.kube import Kube, collection_path
from kubetune_operator.prometheus import PrometheusError, query_scalar, trigger_queries
from kubetune_operator.retraining import (
    JUDGED,
    RETRAIN_REQUESTED,
    Breach,
    Readings,
    build_retrain_job,
    find_breach,
    judge,
    judgement_message,
    retrain_blocker,
    retrain_name,
)
from kubetune_operator.status import Event


def ftj_path(namespace: str, name: str) -> str:
    return f"{collection_path('kubetune.dev/v1alpha1', 'FineTuneJob', namespace)}/{name}"


async def judge_retrains(
    kube: Kube, ad: AdapterDeployment, status: AdapterDeploymentStatus, events: list[Event], now: str
) -> None:
    """Move running retrain records forward; a challenger that beats the champion is promoted."""
    for record in status.retrains:
        if record.outcome not in ("Pending", "Running"):
            continue
        body = await kube.get(ftj_path(ad.metadata.namespace or "default", record.fine_tune_job))
        if body is None:
            record.outcome = "Failed"
            events.append(
                Event("Warning", "RetrainFailed", f"retraining FineTuneJob {record.fine_tune_job} vanished")
            )
            continue
        job = FineTuneJob.model_validate(body)
        metric = job.spec.gate_metric
        verdict = judge(job.status, metric, ad.spec.retraining)
        record.outcome, record.metric, record.rows = verdict.outcome, metric, verdict.rows
        record.challenger, record.champion = verdict.challenger, verdict.champion
        if (e := verdict.evidence) is not None:
            record.difference, record.lower_bound, record.upper_bound = (
                round(e.difference, 4),
                round(e.lower, 4),
                round(e.upper, 4),
            )
        if verdict.outcome in ("Pending", "Running"):
            continue
        text = (
            f"{record.fine_tune_job} failed: {job.status.message}"
            if verdict.outcome == "Failed"
            else judgement_message(record.fine_tune_job, metric, verdict, ad.spec.retraining)
        )
        shown = JUDGED[verdict.outcome]
        gen = ad.metadata.generation
        if verdict.outcome == "Promoted":
            status.promoted = record.fine_tune_job
        status.conditions = set_condition(
            status.conditions, "Promoted", shown.promoted, shown.promoted_reason, text, now, gen
        )
        status.conditions = set_condition(
            status.conditions, "Retraining", "False", shown.reason, text, now, gen
        )
        events.append(Event(shown.event_type, shown.reason, text))


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
                q.estimated_accuracy,
                q.estimated_accuracy_sustained,
            )
        ]
    return Readings(*values)


def monitoring_due(ad: AdapterDeployment, status: AdapterDeploymentStatus, now: str) -> bool:
    if ad.spec.monitoring.prometheus_url is None or status.active_adapter is None:
        return False
    if status.last_evaluated is None:
        return True
    elapsed = datetime.datetime.fromisoformat(now.replace("Z", "+00:00")) - datetime.datetime.fromisoformat(
        status.last_evaluated.replace("Z", "+00:00")
    )
    return elapsed.total_seconds() >= ad.spec.monitoring.interval_seconds


async def monitor(
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
    status.estimated_accuracy = readings.estimated_accuracy
    breach = find_breach(ad.spec.monitoring, readings)
    drifted = breach is not None
    status.conditions = set_condition(
        status.conditions,
        "Drifted",
        "True" if drifted else "False",
        breach.reason if breach else "WithinThresholds",
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


async def manual_retrain(
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


async def _template_from_ref(kube: Kube, ad: AdapterDeployment) -> FineTuneJobSpec | None:
    if ad.spec.adapter.fine_tune_job_ref is None:
        return None
    body = await kube.get(
        ftj_path(ad.metadata.namespace or "default", ad.spec.adapter.fine_tune_job_ref.name)
    )
    return FineTuneJob.model_validate(body).spec if body is not None else None
