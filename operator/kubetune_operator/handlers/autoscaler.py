"""Keep the AdapterDeployment's autoscaler (HPA or KEDA ScaledObject) as spec.autoscaling says, and
report it in the AutoscalerReady condition. The autoscaler writes spec.replicas through the scale
subresource; the operator never writes replicas itself, so the two never fight."""

from __future__ import annotations

from typing import Any

from kubetune.api.adapterdeployment import AdapterDeployment
from kubetune.api.adapterdeployment_status import AdapterDeploymentStatus
from kubetune_operator.builders.autoscaling import HPA_API, KEDA_API, build_autoscaler
from kubetune_operator.conditions import get_condition, set_condition
from kubetune_operator.kube import Kube, object_path
from kubetune_operator.status import Event

CONDITION = "AutoscalerReady"
KEDA_MISSING = (
    "autoscaling.keda is true but KEDA is not installed (no keda.sh/v1alpha1 ScaledObject API): install "
    "KEDA, or set autoscaling.keda false to use a HorizontalPodAutoscaler"
)


def _ref(ad: AdapterDeployment, api: str, kind: str) -> dict[str, Any]:
    return {
        "apiVersion": api,
        "kind": kind,
        "metadata": {"namespace": ad.metadata.namespace or "default", "name": ad.metadata.name},
    }


async def _drop(kube: Kube, ad: AdapterDeployment, api: str, kind: str) -> None:
    ref = _ref(ad, api, kind)
    if await kube.peek(ref) is not None:
        await kube.delete(object_path(ref))


async def reconcile_autoscaler(
    kube: Kube,
    ad: AdapterDeployment,
    owner: dict[str, Any],
    status: AdapterDeploymentStatus,
    events: list[Event],
    now: str,
) -> None:
    """Apply the wanted autoscaler, delete the other kind, set the AutoscalerReady condition."""
    want = build_autoscaler(ad, owner)
    before = get_condition(status.conditions, CONDITION)
    if before is not None:  # one was applied before (only then can one be there to drop)
        if want is None or want["kind"] != "HorizontalPodAutoscaler":
            await _drop(kube, ad, HPA_API, "HorizontalPodAutoscaler")
        if (want is None or want["kind"] != "ScaledObject") and await kube.exists(f"/apis/{KEDA_API}"):
            await _drop(kube, ad, KEDA_API, "ScaledObject")
    if want is None:
        status.conditions = [c for c in status.conditions if c.type != CONDITION]
        return
    gen = ad.metadata.generation
    keda_installed = want["kind"] != "ScaledObject" or await kube.exists(f"/apis/{KEDA_API}")
    if want["kind"] == "ScaledObject" and not keda_installed:
        status.conditions = set_condition(
            status.conditions, CONDITION, "False", "KedaMissing", KEDA_MISSING, now, gen
        )
        if before is None or before.reason != "KedaMissing":
            events.append(Event("Warning", "KedaMissing", KEDA_MISSING))
        return
    await kube.apply(want)
    spec = ad.spec.autoscaling
    assert spec is not None
    what = "KEDA ScaledObject" if spec.keda else "HorizontalPodAutoscaler"
    message = (
        f"{what} {ad.metadata.name}: {spec.min_replicas}-{spec.max_replicas} pods at "
        f"{spec.target_queue_per_pod:g} queued requests per pod"
    )
    status.conditions = set_condition(status.conditions, CONDITION, "True", "Applied", message, now, gen)
