"""Watches on the children we own, as controller-runtime's ``Owns()``: a child's event requeues its owner.

The API server filters the streams by our labels (``settings.watching.label_selectors``), so the
operator never sees other teams' Jobs, Pods, Deployments, ConfigMaps, Services or PDBs. Kopf indices
keep a slim copy of each Job and of its validation and training Pods per owning FineTuneJob (the
reconcile reads its children there, not from the API server), and Kopf starts no handler before
every index has its initial list: a restarted operator never mistakes "not listed yet" for
"deleted". The serving children go to the child client's cache (``Kube.observe``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import kopf

from kubetune_operator.builders.meta import LABEL_ADAPTERDEPLOYMENT, LABEL_COMPONENT, LABEL_FINETUNEJOB
from kubetune_operator.controller import Controller

JOBS = ("batch", "v1", "jobs")
PODS = ("", "v1", "pods")
DEPLOYMENTS = ("apps", "v1", "deployments")
CONFIGMAPS = ("", "v1", "configmaps")
SERVICES = ("", "v1", "services")
PDBS = ("policy", "v1", "poddisruptionbudgets")
# Validation and training pods: a pod the scheduler cannot place or the kubelet cannot start is seen
# at once, whichever Job it belongs to.
POD_COMPONENTS = ("validate-data", "train")
FTJ_PODS = f"{LABEL_FINETUNEJOB},{LABEL_COMPONENT} in ({','.join(POD_COMPONENTS)})"
_META = ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp", "labels", "ownerReferences")


def slim(body: kopf.Body | dict[str, Any], spec_fields: tuple[str, ...] = ()) -> dict[str, Any]:
    """What the reconcile reads of a child: identity, owners, the given spec fields, the status."""
    meta = body.get("metadata", {})
    spec = body.get("spec", {}) or {}
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {k: meta[k] for k in _META if k in meta},
        "spec": {k: spec[k] for k in spec_fields if k in spec},
        "status": dict(body.get("status") or {}),
    }


def _one_of(values: tuple[str, ...]) -> Callable[..., bool]:
    """A Kopf label filter: the label's value is one of ``values``."""

    def matches(value: str | None, **_: Any) -> bool:
        return value in values

    return matches


def server_side_filters(settings: kopf.OperatorSettings) -> None:
    settings.watching.label_selectors[JOBS[0], JOBS[2]] = LABEL_FINETUNEJOB
    settings.watching.label_selectors[PODS[0], PODS[2]] = FTJ_PODS
    for serving in (DEPLOYMENTS, CONFIGMAPS, SERVICES, PDBS):
        settings.watching.label_selectors[serving[0], serving[2]] = LABEL_ADAPTERDEPLOYMENT


def register(registry: kopf.OperatorRegistry, ctl_of: Callable[[kopf.Memo], Controller]) -> None:
    owned = {LABEL_FINETUNEJOB: kopf.PRESENT}

    @kopf.index(*JOBS, labels=owned, registry=registry, id="ftj_jobs")
    def ftj_jobs(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Any, Any]:
        fields = ("suspend", "activeDeadlineSeconds", "backoffLimit")
        return {(namespace, labels[LABEL_FINETUNEJOB]): slim(body, fields)}

    pods: dict[str, Any] = {**owned, LABEL_COMPONENT: _one_of(POD_COMPONENTS)}

    @kopf.index(*PODS, labels=pods, registry=registry, id="ftj_pods")
    def ftj_pods(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Any, Any]:
        return {(namespace, labels[LABEL_FINETUNEJOB]): slim(body)}

    @kopf.index("kubetune.dev", "v1alpha1", "adapterdeployments", registry=registry, id="adep_refs")
    def adep_refs(namespace: str, name: str, spec: kopf.Spec, **_: Any) -> dict[Any, Any]:
        sources = [spec.get("adapter") or {}] + [t.get("adapter") or {} for t in spec.get("extraTasks") or []]
        refs = [(s.get("fineTuneJobRef") or {}).get("name") for s in sources]
        return {(namespace, ref): name for ref in refs if ref}

    async def finetunejob_child(namespace: str, labels: kopf.Labels, memo: kopf.Memo, **kw: Any) -> None:
        ctl = ctl_of(memo)
        ctl.bind(kw)
        # A child's changes come in bursts (a pod created, then the Job's status; a pod ended, then
        # the Job's verdict): one reconcile a moment after the first of them sees them all, one status
        # patch instead of one per event.
        ctl.finetunejobs.kick((namespace, labels[LABEL_FINETUNEJOB]), ctl.settings.child_settle_seconds)

    kopf.on.event(*JOBS, labels=owned, registry=registry, id="job-changed")(finetunejob_child)
    kopf.on.event(*PODS, labels=pods, registry=registry, id="pod-changed")(finetunejob_child)

    def serving_child(api_version: str, kind: str) -> Callable[..., Any]:
        async def changed(
            event: kopf.RawEvent,
            body: kopf.Body,
            namespace: str,
            labels: kopf.Labels,
            memo: kopf.Memo,
            **kw: Any,
        ) -> None:
            ctl = ctl_of(memo)
            ctl.bind(kw)
            # The serving children as the watch has them: a reconcile compares what it would apply
            # with them and reads the Deployments' rollout status, without a GET; one deleted or
            # changed by someone else wakes its AdapterDeployment, which puts it back at once.
            ctl.kube.observe(
                {**dict(body), "apiVersion": api_version, "kind": kind}, event.get("type") == "DELETED"
            )
            # Settled like a FineTuneJob's children: our own applies echo back as a burst of events.
            ctl.adapters.kick((namespace, labels[LABEL_ADAPTERDEPLOYMENT]), ctl.settings.child_settle_seconds)

        return changed

    serving = {LABEL_ADAPTERDEPLOYMENT: kopf.PRESENT}
    for resource, api_version, kind in (
        (DEPLOYMENTS, "apps/v1", "Deployment"),
        (CONFIGMAPS, "v1", "ConfigMap"),
        (SERVICES, "v1", "Service"),
        (PDBS, "policy/v1", "PodDisruptionBudget"),
    ):
        kopf.on.event(*resource, labels=serving, registry=registry, id=f"serving-{kind.lower()}-changed")(
            serving_child(api_version, kind)
        )
