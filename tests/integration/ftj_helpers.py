"""What the FineTuneJob tests do over and over against the real cluster: apply an example, wait for
a phase or a child Job, and play the kubelet for the pods the real Job controller creates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from controlplane import Cluster
from operator_process import Operator

ROOT = Path(__file__).resolve().parents[2]
INTENTS = ROOT / "examples/k8s/finetunejob-support-intents.yaml"
TRIAGE = ROOT / "examples/k8s/finetunejob-support-triage.yaml"
TIMEOUT = 30
CLAIMS = ("kubetune-data", "kubetune-output")


def bind_claims(cluster: Cluster, *claims: str) -> None:
    """PersistentVolumeClaims the pods mount, each bound to a PersistentVolume of its own by the real
    PV controller (without them the scheduler rightly refuses to place the pods)."""
    for claim in claims or CLAIMS:
        pv = f"{cluster.ns}-{claim}"[:63]
        cluster.create(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": pv},
                "spec": {
                    "capacity": {"storage": "10Gi"},
                    "accessModes": ["ReadWriteMany"],
                    "persistentVolumeReclaimPolicy": "Delete",
                    "storageClassName": "",
                    "hostPath": {"path": f"/tmp/kubetune-pv/{pv}"},
                    "claimRef": {"namespace": cluster.ns, "name": claim},
                },
            }
        )
        cluster.create(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": claim},
                "spec": {
                    "accessModes": ["ReadWriteMany"],
                    "storageClassName": "",
                    "volumeName": pv,
                    "resources": {"requests": {"storage": "10Gi"}},
                },
            }
        )
    for claim in claims or CLAIMS:
        cluster.wait_for(
            lambda c=claim: (
                (cluster.get("pvc", cluster.ns, c) or {}).get("status", {}).get("phase") == "Bound"
            ),
            timeout=TIMEOUT,
            message=f"PVC {claim} Bound",
        )


def ftj(cluster: Cluster, name: str) -> dict[str, Any]:
    obj = cluster.get("ftj", cluster.ns, name)
    assert obj is not None
    return obj


def wait_phase(cluster: Cluster, name: str, phase: str, operator: Operator) -> dict[str, Any]:
    try:
        return cluster.wait_for(
            lambda: (o := ftj(cluster, name)).get("status", {}).get("phase") == phase and o,
            timeout=TIMEOUT,
            message=f"{name} phase {phase}",
        )
    except AssertionError:
        print(operator.logs()[-6000:])
        raise


def wait_job(cluster: Cluster, name: str) -> dict[str, Any]:
    return cluster.wait_for(
        lambda: cluster.get("jobs.batch", cluster.ns, name), timeout=TIMEOUT, message=f"Job {name}"
    )


def wait_pod(cluster: Cluster, job: str, count: int = 1) -> dict[str, Any]:
    """The ``count``-th pod the real Job controller made for ``job``, once kwok runs it."""
    pods = cluster.wait_for(
        lambda: len(p := cluster.pods_of(job)) >= count and p,
        timeout=TIMEOUT,
        message=f"{count} pod(s) of {job}",
    )
    return cluster.wait_running(cluster.ns, pods[count - 1]["metadata"]["name"], timeout=TIMEOUT)


def job_condition(job: dict[str, Any] | None, condition: str) -> bool:
    conditions = (job or {}).get("status", {}).get("conditions", [])
    return any(c["type"] == condition and c["status"] == "True" for c in conditions)


def wait_job_condition(cluster: Cluster, name: str, condition: str) -> dict[str, Any]:
    """The real Job controller's verdict (Complete / Failed / Suspended)."""
    return cluster.wait_for(
        lambda: job_condition(j := cluster.get("jobs.batch", cluster.ns, name), condition) and j,
        timeout=TIMEOUT,
        message=f"Job {name} {condition}",
    )


def finish_job(
    cluster: Cluster, name: str, exit_code: int = 0, result: dict[str, Any] | str | None = None
) -> None:
    """Its current pod ends with ``exit_code`` and a termination message; the Job controller decides."""
    pod = wait_pod(cluster, name)
    message = result if isinstance(result, str) else json.dumps(result or {})
    cluster.finish_pod(cluster.ns, pod["metadata"]["name"], exit_code, message)
    wait_job_condition(cluster, name, "Complete" if exit_code == 0 else "Failed")


def apply(cluster: Cluster, path: Path, **spec: Any) -> str:
    doc = yaml.safe_load(path.read_text())
    doc["spec"].update(spec)
    result = cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))
    assert "created" in result.stdout or "configured" in result.stdout, result.stdout
    return str(doc["metadata"]["name"])
