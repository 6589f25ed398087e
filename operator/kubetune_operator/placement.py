"""Placement is a privilege: the priority classes and taints a custom resource may ask for come from the
chart's allow-lists (operator settings), since the operator creates the pods with its own rights.

The CRD already refuses what no cluster should allow (system-*-critical classes, a keyless toleration);
this is the part that depends on the cluster, judged by the operator and reported as a status condition
and a Warning event instead of being copied onto pods.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from kubetune.api.scheduling import Toleration

# Labels and taints of control-plane nodes (kubeadm's current and legacy names).
CONTROL_PLANE_KEYS = ("node-role.kubernetes.io/control-plane", "node-role.kubernetes.io/master")


@dataclass(frozen=True)
class PlacementPolicy:
    """What a custom resource may ask for: ``KUBETUNE_ALLOWED_PRIORITY_CLASSES`` and
    ``KUBETUNE_ALLOWED_TOLERATION_KEYS`` (chart: ``placement.*``)."""

    priority_classes: Collection[str] = ()
    toleration_keys: Collection[str] = ()


def placement_problem(
    priority_class: str | None,
    tolerations: Sequence[Toleration],
    node_selector: Mapping[str, str],
    policy: PlacementPolicy,
    where: str = "spec.resources",
) -> str | None:
    """Why the operator refuses to create pods with this placement, or None.

    >>> placement_problem("high", [], {}, PlacementPolicy(priority_classes=["low"]), where="spec")
    "spec.priorityClassName 'high' is not on the operator's allowedPriorityClasses (low)"
    """
    if priority_class is not None and priority_class not in policy.priority_classes:
        return (
            f"{where}.priorityClassName {priority_class!r} is not on the operator's allowedPriorityClasses "
            f"({_listed(policy.priority_classes)})"
        )
    for index, toleration in enumerate(tolerations):
        if toleration.key not in policy.toleration_keys:
            kind = "a control-plane taint" if toleration.key in CONTROL_PLANE_KEYS else "a taint"
            return (
                f"{where}.tolerations[{index}] tolerates {kind} ({toleration.key!r}) that is not on the "
                f"operator's allowedTolerationKeys ({_listed(policy.toleration_keys)})"
            )
    for key in node_selector:
        if key in CONTROL_PLANE_KEYS and key not in policy.toleration_keys:
            return (
                f"{where}.nodeSelector[{key}] selects control-plane nodes; only a key on the operator's "
                f"allowedTolerationKeys ({_listed(policy.toleration_keys)}) may"
            )
    return None


def _listed(values: Collection[str]) -> str:
    return ", ".join(sorted(values)) or "none allowed"
