"""What the tests of many FineTuneJobs at once share (the chaos burst, the fleet run): small pods so a
burst fits the fake GPU nodes, one manifest holding the whole burst, the kubelet's part for every pod,
and the check that each job ended with exactly its children and a bounded number of events."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import yaml
from controlplane import Cluster
from ftj_helpers import INTENTS
from operator_process import Operator

# Small pods, so that a burst's training pods fit the fake GPUs (and the nodes' CPU and memory).
SMALL = {"gpusPerNode": 1, "cpu": "500m", "memory": "1Gi"}
RESULT = {
    "adapterUri": "pvc://kubetune-output/chaos/adapter",
    "digest": "sha256:" + "c" * 64,
    "metrics": {"after_accuracy": 0.95},
}
# Events one FineTuneJob may have after a clean run: Created (training Job) and one per phase change
# (Pending, ValidatingData, Pending, Running, Succeeded, perhaps PodsPending) — a kill can lose one,
# never add one; anything far above is a storm.
MAX_EVENTS = 10


def log_is_clean(op: Operator) -> None:
    logs = op.logs()
    assert "Traceback" not in logs, logs[-4000:]
    assert " 403" not in logs and "Forbidden" not in logs, logs[-4000:]


def burst_manifest(names: list[str]) -> str:
    doc = yaml.safe_load(INTENTS.read_text())
    docs = []
    for name in names:
        one = json.loads(json.dumps(doc))
        one["metadata"]["name"] = name
        one["spec"]["resources"] = SMALL
        docs.append(one)
    return yaml.safe_dump_all(docs)


def jobs(cluster: Cluster, suffix: str) -> list[dict[str, Any]]:
    return [j for j in cluster.list("jobs.batch", cluster.ns) if j["metadata"]["name"].endswith(suffix)]


def phases(cluster: Cluster) -> dict[str, str]:
    return {
        o["metadata"]["name"]: (o.get("status") or {}).get("phase", "")
        for o in cluster.list("ftj", cluster.ns)
    }


def running_pod(cluster: Cluster, job: str) -> dict[str, Any] | None:
    pods = cluster.pods_of(job)
    return next((p for p in pods if p.get("status", {}).get("phase") == "Running"), None)


def finish_running_pods(cluster: Cluster, done: set[str], message: Callable[[str], str]) -> int:
    """The kubelet's part for a whole fleet: every Running pod of a Job not finished before ends with
    exit 0 and ``message(job name)`` as its termination message; returns how many ended now."""
    todo = [
        (p["metadata"]["name"], p["metadata"]["labels"]["batch.kubernetes.io/job-name"])
        for p in cluster.list("pods", cluster.ns, field_selector="status.phase=Running")
        if p["metadata"]["name"] not in done and "batch.kubernetes.io/job-name" in p["metadata"]["labels"]
    ]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda pj: cluster.finish_pod(cluster.ns, pj[0], 0, message(pj[1])), todo))
    done.update(pod for pod, _ in todo)
    return len(todo)


def assert_children_and_events(cluster: Cluster, names: list[str]) -> None:
    """Each FineTuneJob has exactly one -validate and one -train Job, one ConfigMap, one pod per Job
    and no event storm (checked with one list per kind, so it scales to a fleet)."""
    children: dict[str, list[str]] = {n: [] for n in names}
    for job in cluster.list("jobs.batch", cluster.ns):
        owner = job["metadata"].get("labels", {}).get("kubetune.dev/finetunejob")
        children.setdefault(owner, []).append(job["metadata"]["name"])
    for name in names:
        assert sorted(children[name]) == [f"{name}-train", f"{name}-validate"], (name, children[name])
    maps = Counter(
        c["metadata"]["labels"]["kubetune.dev/finetunejob"]
        for c in cluster.list("configmaps", cluster.ns, "kubetune.dev/finetunejob")
    )
    assert all(maps[n] == 1 for n in names), {n: maps[n] for n in names if maps[n] != 1}
    pods = Counter(
        p["metadata"]["labels"]["batch.kubernetes.io/job-name"]
        for p in cluster.list("pods", cluster.ns, "batch.kubernetes.io/job-name")
    )
    extra = {job: n for job, n in pods.items() if n != 1}
    assert not extra, f"Jobs with more than one pod: {extra}"
    reasons: dict[str, Counter[str]] = {n: Counter() for n in names}
    for event in cluster.list("events", cluster.ns):
        involved = event["involvedObject"]
        if involved.get("kind") == "FineTuneJob" and involved["name"] in reasons:
            reasons[involved["name"]][event["reason"]] += event.get("count") or 1
    for name, seen in reasons.items():
        assert sum(seen.values()) <= MAX_EVENTS, (name, seen)
        assert seen["Created"] <= 1, (name, seen)  # one training Job, created once
        assert all(n <= 2 for n in seen.values()), (name, seen)
