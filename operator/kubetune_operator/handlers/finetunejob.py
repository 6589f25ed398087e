"""FineTuneJob handlers: read spec -> ensure children -> observe them -> patch status once."""

from __future__ import annotations

import datetime
import logging
from typing import Any

import kopf
from pydantic import ValidationError

from kubetune.api.finetunejob import TERMINAL_PHASES, FineTuneJob, FineTuneJobStatus
from kubetune.api.loading import format_validation_error
from kubetune_operator.builders.meta import LABEL_COMPONENT, LABEL_FINETUNEJOB
from kubetune_operator.builders.training import (
    TRAINER_CONTAINER,
    build_config_map,
    build_rendezvous_service,
    build_trainer_service_account,
    build_training_job,
    build_validate_job,
    train_job_name,
    validate_job_name,
)
from kubetune_operator.conditions import status_patch
from kubetune_operator.handlers.serial import Outcome, serialized
from kubetune_operator.kube import Kube, collection_path, object_path
from kubetune_operator.metrics import RECONCILES, forget_finetunejob, record_finetunejob
from kubetune_operator.progress import Progress, parse_progress
from kubetune_operator.settings import OperatorSettings
from kubetune_operator.status import Observed, derive_status, job_condition

RESOURCE = ("kubetune.dev", "v1alpha1", "finetunejobs")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _previous_status(body: dict[str, Any]) -> FineTuneJobStatus:
    try:
        return FineTuneJobStatus.model_validate(dict(body.get("status") or {}))
    except ValidationError:
        return FineTuneJobStatus()  # a status we cannot read is recomputed from the children


def _parse(body: dict[str, Any]) -> tuple[FineTuneJob | None, str | None]:
    try:
        return FineTuneJob.model_validate(dict(body)), None
    except ValidationError as err:
        return None, format_validation_error(err, prefix="spec.").replace("spec.spec.", "spec.")


def _job_path(namespace: str, name: str) -> str:
    return f"{collection_path('batch/v1', 'Job', namespace)}/{name}"


async def _pods(kube: Kube, namespace: str, name: str, component: str) -> list[dict[str, Any]]:
    selector = f"{LABEL_FINETUNEJOB}={name},{LABEL_COMPONENT}={component}"
    return await kube.list(collection_path("v1", "Pod", namespace), selector)


async def _observe(
    kube: Kube, cr: FineTuneJob | None, body: dict[str, Any], error: str | None, settings: OperatorSettings
) -> Observed:
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    generation = body["metadata"].get("generation")
    if cr is None:
        return Observed(generation=generation, spec=None, spec_error=error)
    vjob = await kube.get(_job_path(namespace, validate_job_name(name)))
    tjob = await kube.get(_job_path(namespace, train_job_name(name)))
    vpods = await _pods(kube, namespace, name, "validate-data") if vjob else []
    tpods = await _pods(kube, namespace, name, "train") if tjob else []
    progress = Progress()
    running = sorted(
        (p for p in tpods if p.get("status", {}).get("phase") in ("Running", "Succeeded")),
        key=lambda p: p["metadata"].get("creationTimestamp") or "",
    )
    if running:
        log = await kube.pod_log(
            namespace, running[-1]["metadata"]["name"], TRAINER_CONTAINER, settings.log_tail_lines
        )
        progress = parse_progress(log)
    return Observed(generation, cr.spec, None, vjob, vpods, tjob, tpods, progress)


async def _ensure_children(
    kube: Kube,
    cr: FineTuneJob,
    body: dict[str, Any],
    obs: Observed,
    prev: FineTuneJobStatus,
    settings: OperatorSettings,
    logger: logging.Logger,
) -> Observed:
    """Create what is missing, patch what may change; returns the observation with new children."""
    owner = dict(body)
    config_map = build_config_map(cr, owner)
    current, created = await kube.ensure(config_map)
    if not created and obs.train_job is None and current.get("data") != config_map["data"]:
        await kube.merge_patch(object_path(config_map), {"data": config_map["data"]})

    image, pull, sa = settings.trainer_image, settings.image_pull_policy, settings.trainer_service_account
    vjob, tjob = obs.validate_job, obs.train_job
    if vjob is None and tjob is None and prev.phase not in ("ValidatingData", "Running"):
        await kube.ensure(build_trainer_service_account(cr.metadata.namespace or "default", sa))
        vjob, _ = await kube.ensure(
            build_validate_job(cr, owner, image, pull, sa, settings.validate_cpu, settings.validate_memory)
        )
        logger.info("created the data-validation Job")
    elif vjob is not None and tjob is None and bool(vjob.get("spec", {}).get("suspend")) != cr.spec.suspend:
        vjob = await kube.merge_patch(object_path(vjob), {"spec": {"suspend": cr.spec.suspend}})
    if tjob is None and job_condition(vjob, "Complete") and prev.phase != "Running":
        if cr.spec.resources.nodes > 1:
            await kube.ensure(build_rendezvous_service(cr, owner))
        tjob, created = await kube.ensure(build_training_job(cr, owner, image, pull, sa))
        _created(body, tjob, created, "the training Job", logger)
    elif tjob is not None and not job_condition(tjob, "Complete") and not job_condition(tjob, "Failed"):
        tjob = await _sync_training_job(kube, cr, tjob)
    return Observed(
        obs.generation, obs.spec, None, vjob, obs.validate_pods, tjob, obs.train_pods, obs.progress
    )


def _created(
    body: dict[str, Any], child: dict[str, Any], created: bool, what: str, logger: logging.Logger
) -> None:
    if created:
        message = f"created {what} {child['metadata']['name']}"
        logger.info(message)
        kopf.event(body, type="Normal", reason="Created", message=message)


async def _sync_training_job(kube: Kube, cr: FineTuneJob, tjob: dict[str, Any]) -> dict[str, Any]:
    """Propagate the fields that may change on a started job; never touch the pod template
    (Kueue edits it while the Job is suspended)."""
    want: dict[str, Any] = {}
    suspended = bool(tjob.get("spec", {}).get("suspend"))
    if cr.spec.suspend and not suspended:
        want["suspend"] = True
    elif not cr.spec.suspend and suspended and not cr.spec.resources.queue_name:
        want["suspend"] = False  # with a queue, un-suspending is Kueue's decision (admission)
    if tjob.get("spec", {}).get("activeDeadlineSeconds") != cr.spec.active_deadline_seconds:
        want["activeDeadlineSeconds"] = cr.spec.active_deadline_seconds
    if not want:
        return tjob
    return await kube.merge_patch(object_path(tjob), {"spec": want}) or tjob


async def reconcile(body: dict[str, Any], memo: kopf.Memo, logger: logging.Logger) -> Outcome:
    """The one level-based reconcile, run on create/update/resume and on every resync tick."""
    kube: Kube = memo.kube
    settings: OperatorSettings = memo.settings
    prev = _previous_status(body)
    generation = body["metadata"].get("generation")
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    if prev.phase in TERMINAL_PHASES:
        record_finetunejob(namespace, name, prev.phase, prev.progress, prev.loss)  # re-export after restarts
        stale = prev.observed_generation != generation
        return Outcome(status={"observedGeneration": generation} if stale else None)
    cr, error = _parse(body)
    try:
        obs = await _observe(kube, cr, body, error, settings)
        if cr is not None:
            obs = await _ensure_children(kube, cr, body, obs, prev, settings, logger)
    except Exception:
        RECONCILES.labels(result="error").inc()
        raise
    new, events = derive_status(obs, prev, _now())
    record_finetunejob(namespace, name, new.phase, new.progress, new.loss)
    failed = next((c for c in new.conditions if c.type == "Failed" and c.status == "True"), None)
    if failed is not None and failed.reason == "TooManyPreemptions" and obs.train_job is not None:
        await kube.delete(object_path(obs.train_job))
    if error is not None:
        logger.warning("invalid FineTuneJob spec: %s", error)
    RECONCILES.labels(result="ok").inc()
    return Outcome(status_patch(prev.wire(), new.wire()) if new != prev else None, events)


def _forget(namespace: str, name: str, **_: Any) -> None:
    forget_finetunejob(namespace, name)


def register(registry: kopf.OperatorRegistry, settings: OperatorSettings) -> None:
    """Attach the FineTuneJob handlers to ``registry``."""
    handler = serialized(reconcile)
    kopf.on.delete(*RESOURCE, registry=registry, id="forget-metrics", optional=True)(_forget)
    kopf.on.create(*RESOURCE, registry=registry, id="reconcile-create")(handler)
    kopf.on.resume(*RESOURCE, registry=registry, id="reconcile-resume")(handler)
    kopf.on.update(*RESOURCE, field="spec", registry=registry, id="reconcile-update")(handler)
    kopf.timer(
        *RESOURCE,
        interval=settings.resync_seconds,
        registry=registry,
        id="resync",
        when=lambda status, **_: (status or {}).get("phase") not in TERMINAL_PHASES,
    )(handler)
