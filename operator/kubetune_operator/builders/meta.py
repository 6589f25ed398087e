"""Names, labels and owner references shared by every child object."""

from __future__ import annotations

import hashlib
from typing import Any

LABEL_FINETUNEJOB = "kubetune.dev/finetunejob"
LABEL_ADAPTERDEPLOYMENT = "kubetune.dev/adapterdeployment"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_QUEUE = "kueue.x-k8s.io/queue-name"
MAX_NAME = 63


def child_name(owner: str, suffix: str) -> str:
    """Deterministic child name ``<owner>-<suffix>``, shortened with a hash when over 63 chars."""
    name = f"{owner}-{suffix}"
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(owner.encode()).hexdigest()[:8]
    return f"{owner[: MAX_NAME - len(suffix) - 10].rstrip('-')}-{digest}-{suffix}"


def owner_reference(owner: dict[str, Any]) -> dict[str, Any]:
    meta = owner["metadata"]
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def child_metadata(owner: dict[str, Any], name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": owner["metadata"]["namespace"],
        "labels": labels,
        "ownerReferences": [owner_reference(owner)],
    }


def common_labels(instance: str, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "kubetune",
        "app.kubernetes.io/instance": instance,
        "app.kubernetes.io/managed-by": "kubetune-operator",
        LABEL_COMPONENT: component,
    }
