"""AdapterDeployment handlers: resolve the adapter -> apply server children -> status from the Deployment."""

from __future__ import annotations

import datetime
import logging
from typing import Any

import kopf
from pydantic import ValidationError

from kubetune.api.adapterdeployment import AdapterDeployment, AdapterDeploymentStatus
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
from kubetune_operator.settings import OperatorSettings

RESOURCE = ("kubetune.dev", "v1alpha1", "adapterdeployments")
PROMETHEUS_OPERATOR_API = "/apis/monitoring.coreos.com/v1"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _previous(body: kopf.Body) -> AdapterDeploymentStatus:
    try:
        return AdapterDeploymentStatus.model_validate(dict(body.get("status") or {}))
    except ValidationError:
        return AdapterDeploymentStatus()


async def reconcile_adapter(
    body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: logging.Logger, **_: Any
) -> None:
    """Level-based: run on create/update/resume and on every resync tick."""
    kube: Kube = memo.kube
    settings: OperatorSettings = memo.settings
    prev = _previous(body)
    try:
        ad = AdapterDeployment.model_validate(dict(body))
    except ValidationError as err:
        message = format_validation_error(err).replace("spec.", "spec.", 1)
        status = prev.model_copy(
            update={
                "phase": "Degraded",
                "message": message,
                "observed_generation": body["metadata"].get("generation"),
            }
        )
        status.conditions = set_condition(
            status.conditions, "Ready", "False", "InvalidSpec", message, _now(), status.observed_generation
        )
        if status != prev:
            patch.status.update(status.wire())
            kopf.event(body, type="Warning", reason="InvalidSpec", message=message)
        return
    namespace = body["metadata"]["namespace"]
    ftj = None
    if ad.spec.adapter.fine_tune_job_ref is not None:
        ftj = await kube.get(
            f"{collection_path('kubetune.dev/v1alpha1', 'FineTuneJob', namespace)}/"
            f"{ad.spec.adapter.fine_tune_job_ref.name}"
        )
    active = prev.active_adapter.version if prev.active_adapter else None
    resolved = resolve_adapter(ad, ftj, prev.history, active)
    deployment = None
    if not isinstance(resolved, Unresolved):
        owner = dict(body)
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
    new, events = derive_adapter_status(ad, resolved, deployment, prev, _now())
    if new != prev:
        patch.status.update(new.wire())
    for event in events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)


def register(registry: kopf.OperatorRegistry, settings: OperatorSettings) -> None:
    kopf.on.create(*RESOURCE, registry=registry, id="reconcile-create")(reconcile_adapter)
    kopf.on.resume(*RESOURCE, registry=registry, id="reconcile-resume")(reconcile_adapter)
    kopf.on.update(*RESOURCE, field="spec", registry=registry, id="reconcile-update")(reconcile_adapter)
    kopf.timer(*RESOURCE, interval=settings.resync_seconds, registry=registry, id="resync")(reconcile_adapter)
