"""FineTuneJob reconcile: read spec -> children from the watch cache -> ensure what is missing ->
status derived from the children, patched once."""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import kopf
from pydantic import ValidationError

from kubetune.api.finetunejob import TERMINAL_PHASES, FineTuneJob, FineTuneJobStatus
from kubetune.api.loading import format_validation_error
from kubetune_operator.builders.training import (
    build_config_map,
    build_rendezvous_service,
    build_trainer_service_account,
    build_training_job,
    build_validate_job,
    train_job_name,
    validate_job_name,
)
from kubetune_operator.conditions import status_patch
from kubetune_operator.handlers.outcome import Outcome
from kubetune_operator.kube import Kube, collection_path, object_path
from kubetune_operator.metrics import RECONCILES, forget_finetunejob, record_finetunejob
from kubetune_operator.placement import placement_problem
from kubetune_operator.progress import Progress
from kubetune_operator.settings import OperatorSettings
from kubetune_operator.status import (
    Observed,
    children_agree_terminal,
    derive_status,
    job_condition,
    unfinished,
)

if TYPE_CHECKING:
    from kubetune_operator.controller import Children, Controller

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


def _placement_refused(cr: FineTuneJob, settings: OperatorSettings) -> str | None:
    res = cr.spec.resources
    return placement_problem(res.priority_class_name, res.tolerations, res.node_selector, settings.placement)


def _job_path(namespace: str, name: str) -> str:
    return f"{collection_path('batch/v1', 'Job', namespace)}/{name}"


def ftj_key(body: dict[str, Any]) -> tuple[str, str]:
    return body["metadata"]["namespace"], body["metadata"]["name"]


def _named(objs: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    return next((o for o in objs if o["metadata"]["name"] == name), None)


def _owned_by(pods: list[dict[str, Any]], job: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The pods of this very Job (a deleted Job's pods linger with its labels until collected)."""
    if job is None:
        return []
    uid = job["metadata"].get("uid")
    return [
        p for p in pods if any(ref.get("uid") == uid for ref in p["metadata"].get("ownerReferences") or [])
    ]


async def _observe(
    kube: Kube,
    cr: FineTuneJob,
    body: dict[str, Any],
    prev: FineTuneJobStatus,
    children: Children,
    progress: Progress,
) -> Observed:
    """The children as the watch cache has them; the API server is asked only where a cache that
    lags our own writes could mislead (a training Job we made that the cache does not show yet)."""
    namespace, name = ftj_key(body)
    generation = body["metadata"].get("generation")
    vjob = _named(children.jobs, validate_job_name(name))
    tjob = _named(children.jobs, train_job_name(name))
    deleted = False
    if tjob is None and prev.job_name and prev.phase not in TERMINAL_PHASES:
        tjob = await kube.get(_job_path(namespace, train_job_name(name)))
        deleted = tjob is None
    # Both Jobs' pods are watched: a validation pod that cannot be scheduled or started is as
    # visible as a training pod.
    vpods = _owned_by(children.pods, vjob)
    tpods = _owned_by(children.pods, tjob)
    return Observed(generation, cr.spec, None, vjob, vpods, tjob, tpods, progress, train_job_deleted=deleted)


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
    image, pull, sa = settings.trainer_image, settings.image_pull_policy, settings.trainer_service_account
    vjob, tjob = obs.validate_job, obs.train_job
    spec_changed = prev.observed_generation != obs.generation
    if tjob is None and (vjob is None or spec_changed):
        # The ConfigMap is the trainer's config: written before a Job that mounts it starts, and
        # rewritten from a changed spec until training starts (then the spec is immutable).
        await _write_config_map(kube, build_config_map(cr, owner))
    if vjob is None and tjob is None:
        await kube.ensure(build_trainer_service_account(cr.metadata.namespace or "default", sa))
        vjob, created = await kube.create(
            build_validate_job(
                cr,
                owner,
                image,
                pull,
                sa,
                settings.validate_cpu,
                settings.validate_memory,
                allowed_hosts=settings.allowed_hosts,
            )
        )
        if created:
            logger.info("created the data-validation Job")
    elif vjob is not None and tjob is None and bool(vjob.get("spec", {}).get("suspend")) != cr.spec.suspend:
        vjob = await kube.merge_patch(object_path(vjob), {"spec": {"suspend": cr.spec.suspend}})
    deleted = obs.train_job_deleted
    budget_left = not deleted or prev.preemptions + 1 <= cr.spec.max_preemptions
    recreated = False
    if tjob is None and job_condition(vjob, "Complete") and budget_left:
        if deleted:
            await _write_config_map(kube, build_config_map(cr, owner))  # it may be gone too
        if cr.spec.resources.nodes > 1:
            await kube.ensure(build_rendezvous_service(cr, owner))
        tjob, created = await kube.create(
            build_training_job(cr, owner, image, pull, sa, settings.allowed_hosts)
        )
        recreated = deleted and created
        _created(body, tjob, created, "the training Job" + (" again" if recreated else ""), logger)
    elif unfinished(tjob):
        assert tjob is not None
        tjob = await _sync_training_job(kube, cr, tjob)
    return replace(obs, validate_job=vjob, train_job=tjob, train_job_recreated=recreated)


async def _write_config_map(kube: Kube, config_map: dict[str, Any]) -> None:
    current, created = await kube.create(config_map)
    if not created and current.get("data") != config_map["data"]:
        await kube.merge_patch(object_path(config_map), {"data": config_map["data"]})


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


async def reconcile(
    body: dict[str, Any], ctl: Controller, children: Children, logger: logging.Logger
) -> Outcome:
    """The one level-based reconcile of a FineTuneJob, run whenever it or one of its children changed,
    on trainer progress, and on the slow resync."""
    kube, settings = ctl.kube, ctl.settings
    prev = _previous_status(body)
    namespace, name = key = ftj_key(body)
    cr, error = _parse(body)
    if cr is not None and (error := _placement_refused(cr, settings)) is not None:
        cr = None
    try:
        if cr is None:
            obs = Observed(generation=body["metadata"].get("generation"), spec=None, spec_error=error)
        else:
            obs = await _observe(kube, cr, body, prev, children, ctl.followers.progress(key))
            if not (prev.phase in TERMINAL_PHASES and children_agree_terminal(obs)):
                obs = await _ensure_children(kube, cr, body, obs, prev, settings, logger)
    except Exception:
        RECONCILES.labels(result="error").inc()
        raise
    new, events = derive_status(obs, prev, _now())
    record_finetunejob(namespace, name, new.phase, new.progress, new.loss)
    failed = next((c for c in new.conditions if c.type == "Failed" and c.status == "True"), None)
    if failed is not None and failed.reason == "TooManyPreemptions" and unfinished(obs.train_job):
        assert obs.train_job is not None
        await kube.delete(object_path(obs.train_job))
    if error is not None and prev.phase != new.phase:
        logger.warning("invalid FineTuneJob spec: %s", error)
    ctl.followers.follow(key, namespace, _followed_pod(new, obs))
    RECONCILES.labels(result="ok").inc()
    return Outcome(status_patch(prev.wire(), new.wire()) if new != prev else None, events)


def _followed_pod(status: FineTuneJobStatus, obs: Observed) -> str | None:
    """The newest running training pod, whose log carries the progress (None: follow nothing)."""
    if status.phase != "Running":
        return None
    running = [p for p in obs.train_pods if p.get("status", {}).get("phase") == "Running"]
    if not running:
        return None
    return max(running, key=lambda p: p["metadata"].get("creationTimestamp") or "")["metadata"]["name"]


def register(registry: kopf.OperatorRegistry, ctl_of: Callable[[kopf.Memo], Controller]) -> None:
    """Every FineTuneJob event (ADDED at start-up is the resume, MODIFIED covers spec edits and a
    status written by someone else) asks for a reconcile; the children's events do too (watches.py)."""

    @kopf.on.event(*RESOURCE, registry=registry, id="finetunejob-changed")
    async def changed(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **kw: Any) -> None:
        ctl = ctl_of(memo)
        ctl.bind(kw)
        key = ftj_key(dict(body))
        if event.get("type") == "DELETED":
            ctl.forget_finetunejob(key)
            forget_finetunejob(*key)
            return
        ctl.finetunejob_seen(key, dict(body))
