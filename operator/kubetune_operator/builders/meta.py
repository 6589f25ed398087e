"""Names, labels and owner references shared by every child object."""

from __future__ import annotations

import hashlib
from typing import Any

import yaml

# libyaml's emitter where PyYAML has it: the pure-Python one took 3 ms per ConfigMap, half of a
# reconcile's CPU in the 1,000-job burst and a tenth of the operator's CPU in a burst of 200
# AdapterDeployments (benchmarks/SCALE_RESULTS.md). Same YAML, same safe subset.
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def yaml_text(data: Any) -> str:
    """``data`` as the YAML file a trainer or server pod reads from its ConfigMap (key order kept)."""
    return str(yaml.dump(data, Dumper=_DUMPER, sort_keys=False))


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
