"""Operator scale benchmark (not a test): N FineTuneJobs burst-created against the real control plane.

A control plane of its own (kube-apiserver, controller-manager, scheduler, etcd, kwok fake nodes:
tests/controlplane), the CRDs from crds/, and the real operator (`kubetune operator --standalone`,
the chart's RBAC token) talking to the API server through the counting proxy (tests/controlplane/
faultproxy.py, no faults), so every request it makes is counted. Measured per run:

- the burst: N FineTuneJobs POSTed in parallel; create→first child Job latency from the client-side
  time each POST returned to the arrival of the Job's ADDED event on a watch (not creationTimestamp,
  which has 1 s resolution); the time until every child Job exists;
- the kubelet's part: every validate pod (made by the real Job controller) finished; pod-finished→
  FineTuneJob phase change latency, from the PATCH of the pod's status to the FineTuneJob watch event;
- the operator's CPU seconds and peak RSS (/proc), API requests per job (proxy), and its idle cost:
  CPU per minute with the N jobs live.

The baseline, in the same run on a fresh namespace, is a bare Kopf operator that creates one Job per
FineTuneJob and nothing else (benchmarks/bare_kopf_operator.py): the framework floor.

    .venv/bin/python benchmarks/operator_scale.py [--n 100] [--idle 60] [--out benchmarks/SCALE_RESULTS.md]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import json
import math
import multiprocessing
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "integration")]
from controlplane import Cluster, ControlPlane, HTTPError  # noqa: E402
from controlplane.chart_rbac import operator_token  # noqa: E402
from controlplane.faultproxy import FaultProxy  # noqa: E402
from ftj_helpers import INTENTS, bind_claims  # noqa: E402
from operator_process import Operator  # noqa: E402

OPERATOR_NAMESPACE = "kubetune-system"
FTJ_API = "/apis/kubetune.dev/v1alpha1"
# The chart's defaults (the test harness's fast settings undone); the validate pod's requests made
# small so that N pods fit on few nodes.
OPERATOR_ENV = {
    "KUBETUNE_RESYNC_SECONDS": "300",
    "KUBETUNE_ADAPTER_RESYNC_SECONDS": "10",
    "KUBETUNE_PROGRESS_SECONDS": "3",
    "KUBETUNE_LOG_REOPEN_MAX_SECONDS": "60",
    "KUBETUNE_VALIDATE_CPU": "50m",
    "KUBETUNE_VALIDATE_MEMORY": "64Mi",
}
KWOK_LOGS = "/apis/kwok.x-k8s.io/v1alpha1"
PODS_PER_NODE = 100  # kwok nodes hold 110


# -- small measurement helpers ------------------------------------------------------------------------
def pct(values: Iterable[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


@dataclass
class ProcessMeter:
    """CPU seconds (user+system) and peak RSS of one process, read from /proc."""

    pid: int

    def cpu(self) -> float:
        times = psutil.Process(self.pid).cpu_times()
        return times.user + times.system

    def peak_rss_mib(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return math.nan


def wait_until(predicate: Callable[[], Any], timeout: float, message: str, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s: {message}")
        time.sleep(interval)
    return value


# -- the counting proxy, in a process of its own (its CPU must not compete with our watches' GIL) ------
def _serve_proxy(conn: Any, upstream: str, ca: str) -> None:
    with FaultProxy(upstream, Path(ca)) as proxy:
        conn.send(proxy.port)
        while conn.recv() != "stop":
            conn.send(dict(proxy.requests))


class CountingProxy:
    def __init__(self, upstream: str, ca: Path) -> None:
        self._conn, child = multiprocessing.get_context("spawn").Pipe()
        self._proc = multiprocessing.get_context("spawn").Process(
            target=_serve_proxy, args=(child, upstream, str(ca)), daemon=True
        )
        self._proc.start()
        self.url = f"http://127.0.0.1:{self._conn.recv()}"

    def counts(self) -> collections.Counter[str]:
        """Requests so far by ``METHOD resource[/{name}[/subresource]]`` (namespaces and names elided)."""
        self._conn.send("count")
        out: collections.Counter[str] = collections.Counter()
        for key, n in self._conn.recv().items():
            method, path = key.split(" ", 1)
            parts = re.sub(r"/namespaces/[^/]+", "", path).strip("/").split("/")
            kind = parts[2:] if parts[0] == "api" else parts[3:]
            out[" ".join([method, "/".join(kind[:1] + ["{name}"] * (len(kind) > 1) + kind[2:3])])] += n
        return out

    def requests(self) -> int:
        return sum(self.counts().values())

    def close(self) -> None:
        self._conn.send("stop")
        self._proc.join(10)

    def kubeconfig(self, path: Path, token: str, namespace: str) -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "proxy", "cluster": {"server": self.url}}],
            "users": [{"name": "operator", "user": {"token": token}}],
            "contexts": [{"name": "proxy", "context": {"cluster": "proxy", "user": "operator"}}],
            "current-context": "proxy",
        }
        config["contexts"][0]["context"]["namespace"] = namespace
        path.write_text(yaml.safe_dump(config))
        return path


# -- watches: arrival times of events, recorded client-side ---------------------------------------------
class Watch(threading.Thread):
    """A watch on one collection; ``on_event(type, object, monotonic_time)`` per event, re-watched
    from the last resourceVersion when the server ends the stream."""

    def __init__(self, cluster: Cluster, path: str, on_event: Callable[[str, dict, float], None]) -> None:
        super().__init__(daemon=True)
        self.cluster, self.path, self.on_event = cluster, path, on_event
        self.stopped = threading.Event()
        self.started_watching = threading.Event()

    def current_version(self) -> str:
        """The collection's resourceVersion; retried while a freshly installed CRD's cache starts (429)."""
        return wait_until(lambda: self._list_version(), 60, f"a list of {self.path}", interval=0.5)

    def _list_version(self) -> str | None:
        try:
            return self.cluster.request("GET", self.path)["metadata"]["resourceVersion"]
        except HTTPError as exc:
            if exc.code == 429:
                return None
            raise

    def run(self) -> None:
        version = self.current_version()
        while not self.stopped.is_set():
            query = urllib.parse.urlencode(
                {"watch": "true", "resourceVersion": version, "timeoutSeconds": "20"}
            )
            url = f"{self.cluster.url}{self.path}?{query}"
            try:
                with urllib.request.urlopen(url, timeout=60, context=self.cluster._context) as stream:
                    self.started_watching.set()
                    for line in stream:
                        arrived = time.monotonic()
                        event = json.loads(line)
                        if event["type"] == "ERROR":  # 410 Gone: our version is too old
                            version = self.current_version()
                            break
                        version = event["object"]["metadata"]["resourceVersion"]
                        self.on_event(event["type"], event["object"], arrived)
            except OSError as exc:  # a dropped stream under load: watch again from where we were
                print(f"watch {self.path}: {exc}; re-watching", flush=True)
                time.sleep(0.5)


@dataclass
class Timeline:
    """When each FineTuneJob's POST returned, its Job arrived, its pod was finished, its phases came."""

    created: dict[str, float] = field(default_factory=dict)
    job_seen: dict[str, float] = field(default_factory=dict)
    finished: dict[str, float] = field(default_factory=dict)
    phases: dict[str, list[tuple[float, str]]] = field(default_factory=lambda: collections.defaultdict(list))
    progress: dict[str, dict[str, float]] = field(default_factory=dict)  # name -> progress -> arrival
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_job(self, kind: str, obj: dict, arrived: float) -> None:
        name = obj["metadata"]["name"]
        if kind == "ADDED" and name.endswith("-validate"):
            with self.lock:
                self.job_seen.setdefault(name.removesuffix("-validate"), arrived)

    def on_ftj(self, kind: str, obj: dict, arrived: float) -> None:
        phase = (obj.get("status") or {}).get("phase")
        name = obj["metadata"]["name"]
        progress = (obj.get("status") or {}).get("progress")
        with self.lock:
            if progress and progress not in self.progress.get(name, {}):
                self.progress.setdefault(name, {})[progress] = arrived
            seen = self.phases[name]
            if phase and (not seen or seen[-1][1] != phase):
                seen.append((arrived, phase))

    def phase_of(self, name: str) -> str | None:
        with self.lock:
            seen = self.phases.get(name)
            return seen[-1][1] if seen else None

    def create_to_job(self) -> list[float]:
        return [self.job_seen[n] - t for n, t in self.created.items() if n in self.job_seen]

    def finish_to_phase(self) -> list[float]:
        out = []
        for name, done in self.finished.items():
            later = [t for t, phase in self.phases.get(name, []) if t >= done and phase != "ValidatingData"]
            if later:
                out.append(later[0] - done)
        return out


# -- the steps of one run -------------------------------------------------------------------------------
def manifests(n: int, prefix: str) -> list[dict[str, Any]]:
    doc = yaml.safe_load(INTENTS.read_text())
    docs = []
    for i in range(n):
        one = json.loads(json.dumps(doc))
        one["metadata"]["name"] = f"{prefix}-{i:04d}"
        docs.append(one)
    return docs


def burst_create(
    cluster: Cluster, docs: list[dict[str, Any]], timeline: Any, workers: int, plural: str = "finetunejobs"
) -> float:
    """POST every object at once (``workers`` in flight), noting in ``timeline.created`` when each
    POST returned; seconds the burst took."""
    path = f"{FTJ_API}/namespaces/{cluster.ns}/{plural}"

    def post(doc: dict[str, Any]) -> None:
        cluster.request("POST", path, doc)
        timeline.created[doc["metadata"]["name"]] = time.monotonic()

    start = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(post, docs))
    return time.monotonic() - start


def finish_validate_pods(cluster: Cluster, names: list[str], timeline: Timeline, timeout: float) -> None:
    """Play the kubelet: every validate pod the real Job controller made ends with exit code 0."""
    wanted = {f"{n}-validate": n for n in names}

    def running() -> dict[str, str] | None:
        pods = cluster.list("pods", cluster.ns, label_selector="batch.kubernetes.io/job-name")
        found = {
            p["metadata"]["labels"]["batch.kubernetes.io/job-name"]: p["metadata"]["name"]
            for p in pods
            if p.get("status", {}).get("phase") == "Running"
        }
        return found if set(wanted) <= set(found) else None

    pods = wait_until(running, timeout, "every validate pod Running", interval=1)

    def finish(job: str) -> None:
        cluster.finish_pod(cluster.ns, pods[job], 0, "{}")
        timeline.finished[wanted[job]] = time.monotonic()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(finish, wanted))


@dataclass
class Result:
    label: str
    n: int
    burst_s: float = math.nan
    all_jobs_s: float = math.nan
    create_job: list[float] = field(default_factory=list)
    finish_phase: list[float] = field(default_factory=list)
    burst_cpu_s: float = math.nan
    total_cpu_s: float = math.nan
    peak_rss_mib: float = math.nan
    burst_requests: int = 0
    total_requests: int = 0
    idle_cpu_per_min: float = math.nan
    idle_requests_per_min: float = math.nan
    idle_apiserver_cpu_per_min: float = math.nan
    log_to_status: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def measure_idle(
    meter: ProcessMeter, apiserver: ProcessMeter, proxy: CountingProxy, seconds: float, result: Any
) -> None:
    cpu, api_cpu, counts = meter.cpu(), apiserver.cpu(), proxy.counts()
    time.sleep(seconds)
    result.idle_cpu_per_min = (meter.cpu() - cpu) * 60 / seconds
    result.idle_apiserver_cpu_per_min = (apiserver.cpu() - api_cpu) * 60 / seconds
    idle = proxy.counts() - counts
    result.idle_requests_per_min = sum(idle.values()) * 60 / seconds
    result.notes.append(
        "idle requests per minute: "
        + (", ".join(f"{key} {n * 60 / seconds:.0f}" for key, n in idle.most_common(8)) or "none")
    )


def step_line(step: int) -> str:
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    event = {"event": "step", "step": step, "totalSteps": 100, "loss": 1.0 / step}
    return f"{stamp} stdout F {json.dumps(event)}\n"


def give_trainers_a_log(cluster: Cluster, log_file: Path) -> list[str]:
    """Every running training pod logs what a trainer logs (one file, served by kwok through the
    kubelet API as a real kubelet would, followed while it grows); returns their jobs' names."""
    log_file.write_text(step_line(1))
    pods = [
        p
        for p in cluster.list("pods", cluster.ns, label_selector="app.kubernetes.io/component=train")
        if p.get("status", {}).get("phase") == "Running"
    ]

    def logs(pod: dict[str, Any]) -> None:
        body = {
            "apiVersion": "kwok.x-k8s.io/v1alpha1",
            "kind": "Logs",
            "metadata": {"name": pod["metadata"]["name"], "namespace": cluster.ns},
            "spec": {"logs": [{"logsFile": str(log_file), "follow": True}]},
        }
        cluster.request("POST", f"{KWOK_LOGS}/namespaces/{cluster.ns}/logs", body)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(logs, pods))
    return [p["metadata"]["labels"]["kubetune.dev/finetunejob"] for p in pods]


def apiserver_meter(plane: ControlPlane) -> ProcessMeter:
    (component,) = [c for c in plane.components if c.name == "kube-apiserver"]
    assert component.proc is not None
    return ProcessMeter(component.proc.pid)


def watch_and_start(
    cluster: Cluster,
    paths: dict[str, Callable[[str, dict, float], None]],
    start_operator: Callable[[Cluster], subprocess.Popen[bytes] | None],
    proxy: CountingProxy,
) -> tuple[list[Watch], ProcessMeter]:
    """Our watches on ``paths`` first, then the operator; returns once it has listed and watches
    (its requests stop growing), with the meter of its process."""
    watches = [Watch(cluster, path, on_event) for path, on_event in paths.items()]
    for w in watches:
        w.start()
        w.started_watching.wait(30)
    before = proxy.requests()
    proc = start_operator(cluster)
    assert proc is not None
    meter = ProcessMeter(proc.pid)
    time.sleep(3)
    wait_until(lambda: proxy.requests() - before >= 2, 60, "the operator's first list+watch")
    time.sleep(2)
    return watches, meter


def run_one(
    label: str,
    start_operator: Callable[[Cluster], subprocess.Popen[bytes] | None],
    plane: ControlPlane,
    proxy: CountingProxy,
    args: argparse.Namespace,
    workdir: Path,
    lifecycle: bool,
) -> Result:
    """One operator, one fresh namespace: burst, (lifecycle: finish pods, phase change), idle."""
    ns = f"scale-{label}"
    plane.kubectl("create", "namespace", ns)
    cluster = Cluster(plane, ns, workdir / ns)
    if lifecycle:
        bind_claims(cluster)
    timeline, result = Timeline(), Result(label, args.n)
    watches, meter = watch_and_start(
        cluster,
        {
            f"/apis/batch/v1/namespaces/{ns}/jobs": timeline.on_job,
            f"{FTJ_API}/namespaces/{ns}/finetunejobs": timeline.on_ftj,
        },
        start_operator,
        proxy,
    )
    cpu0, counts0 = meter.cpu(), proxy.counts()
    requests0 = sum(counts0.values())

    docs = manifests(args.n, label)
    t0 = time.monotonic()
    result.burst_s = burst_create(cluster, docs, timeline, args.workers)
    wait_until(lambda: len(timeline.job_seen) >= args.n, args.timeout, f"{args.n} child Jobs")
    result.all_jobs_s = max(timeline.job_seen.values()) - t0
    result.create_job = timeline.create_to_job()
    time.sleep(2)  # the writes that follow a creation (status, events) within the window
    result.burst_cpu_s = meter.cpu() - cpu0
    burst = proxy.counts() - counts0
    result.burst_requests = sum(burst.values())
    result.notes.append(
        "burst requests per job: " + ", ".join(f"{key} {n / args.n:.1f}" for key, n in burst.most_common())
    )

    names = [d["metadata"]["name"] for d in docs]
    if lifecycle:
        wait_until(
            lambda: all(timeline.phase_of(n) == "ValidatingData" for n in names),
            args.timeout,
            "every FineTuneJob ValidatingData",
        )
        finish_validate_pods(cluster, names, timeline, args.timeout)
        wait_until(
            lambda: len(timeline.finish_to_phase()) >= args.n,
            args.timeout,
            "every phase change after the pod",
        )
        result.finish_phase = timeline.finish_to_phase()
        wait_until(
            lambda: all(timeline.phase_of(n) in ("Running", "Pending") for n in names),
            args.timeout,
            "every FineTuneJob Running or Pending (waiting for a GPU)",
        )
        time.sleep(5)  # the scheduler places what fits on the GPU nodes
        after = collections.Counter(timeline.phase_of(n) for n in names)
        result.notes.append(f"phases after validation: {dict(after)}")

    result.total_cpu_s = meter.cpu() - cpu0
    result.total_requests = proxy.requests() - requests0
    logging = []
    if lifecycle:
        log_file = workdir / f"{ns}-trainer.log"
        logging = give_trainers_a_log(cluster, log_file)
        wait_until(
            lambda: all("1/100" in timeline.progress.get(n, {}) for n in logging),
            args.timeout,
            "the first progress of every running trainer in status",
        )
        result.notes.append(f"{len(logging)} running trainers with a followed log during the idle sample")
    measure_idle(meter, apiserver_meter(plane), proxy, args.idle, result)
    if logging:
        with log_file.open("a") as out:  # every trainer logs its next step at once: the worst case
            out.write(step_line(2))
        wrote = time.monotonic()
        with contextlib.suppress(TimeoutError):  # reported below: how many arrived within 120 s
            wait_until(
                lambda: all("2/100" in timeline.progress.get(n, {}) for n in logging),
                120,
                "the next progress of every running trainer in status",
            )
        arrived = [timeline.progress[n]["2/100"] - wrote for n in logging if "2/100" in timeline.progress[n]]
        result.log_to_status = arrived
        result.notes.append(f"next log line in status in 120 s: {len(arrived)} of {len(logging)} trainers")
    result.peak_rss_mib = meter.peak_rss_mib()
    for w in watches:
        w.stopped.set()
    return result


# -- the two operators ------------------------------------------------------------------------------------
def chart_token(plane: ControlPlane, workdir: Path) -> str:
    """A token of the chart's operator ServiceAccount (its ClusterRole, exactly), as tests/conftest.py;
    the chart as committed (HEAD), so that uncommitted edits in the shared tree cannot break a run."""
    archive = subprocess.run(
        ["git", "archive", "HEAD", "charts/kubetune"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(workdir)], input=archive, check=True)
    return operator_token(plane, workdir / "charts" / "kubetune", OPERATOR_NAMESPACE)


class Operators:
    """Starts ours or the floor in a namespace, through the proxy; stops whatever it started."""

    def __init__(self, proxy: CountingProxy, token: str, workdir: Path) -> None:
        self.proxy, self.token, self.workdir = proxy, token, workdir
        self.ours: Operator | None = None
        self.floor: subprocess.Popen[bytes] | None = None

    def start_ours(self, cluster: Cluster) -> subprocess.Popen[bytes] | None:
        config = self.proxy.kubeconfig(self.workdir / "ours.kubeconfig", self.token, cluster.ns)
        self.ours = Operator(config, cluster.ns, self.workdir / "ours.log", OPERATOR_ENV)
        self.ours.start()
        return self.ours.proc

    def start_floor(self, cluster: Cluster) -> subprocess.Popen[bytes] | None:
        config = self.proxy.kubeconfig(self.workdir / "floor.kubeconfig", self.token, cluster.ns)
        command = [sys.executable, "-m", "kopf", "run", "--standalone", "-n", cluster.ns]
        self.floor = subprocess.Popen(
            [*command, str(ROOT / "benchmarks" / "bare_kopf_operator.py")],
            env={**cluster.env, "KUBECONFIG": str(config)},
            stdout=(self.workdir / "floor.log").open("ab"),
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        return self.floor

    def stop(self) -> None:
        if self.ours is not None:
            self.ours.stop()
            self.ours = None
        if self.floor is not None and self.floor.poll() is None:
            self.floor.terminate()
            self.floor.wait(15)
        self.floor = None

    def problems(self, name: str) -> list[str]:
        text = (self.workdir / name).read_text(errors="replace")
        return [w for w in ("Traceback", " 403", "Forbidden") if w in text]


# -- report ---------------------------------------------------------------------------------------------
def row(r: Result) -> str:
    def ms(v: float) -> str:
        return "-" if math.isnan(v) else f"{v * 1000:.0f}"

    return (
        f"| {r.label} | {r.n} | {r.burst_s:.1f} | {r.all_jobs_s:.1f} | {ms(pct(r.create_job, 0.5))} "
        f"| {ms(pct(r.create_job, 0.99))} | {ms(pct(r.finish_phase, 0.5))} | {ms(pct(r.finish_phase, 0.99))} "
        f"| {r.burst_cpu_s:.2f} | {r.burst_cpu_s / r.n * 1000:.1f} | {r.total_cpu_s:.2f} "
        f"| {r.peak_rss_mib:.0f} | {r.burst_requests / r.n:.1f} | {r.total_requests / r.n:.1f} "
        f"| {r.idle_cpu_per_min:.2f} | {r.idle_cpu_per_min / 60 * 1000 / r.n:.3f} "
        f"| {r.idle_apiserver_cpu_per_min / 60 * 1000 / r.n:.3f} | {r.idle_requests_per_min:.0f} "
        f"| {ms(pct(r.log_to_status, 0.5))} | {ms(pct(r.log_to_status, 0.99))} |"
    )


def report(results: list[Result], context: dict[str, str]) -> str:
    ours, floor = results
    ratio = {
        "CPU per job (burst)": ours.burst_cpu_s / max(floor.burst_cpu_s, 1e-9),
        "create→Job p50": pct(ours.create_job, 0.5) / pct(floor.create_job, 0.5),
        "create→Job p99": pct(ours.create_job, 0.99) / pct(floor.create_job, 0.99),
        "time to all Jobs": ours.all_jobs_s / floor.all_jobs_s,
        "requests per job (burst)": ours.burst_requests / max(floor.burst_requests, 1),
        "peak RSS": ours.peak_rss_mib / floor.peak_rss_mib,
        "idle CPU": ours.idle_cpu_per_min / max(floor.idle_cpu_per_min, 1e-9),
        "API server idle CPU": ours.idle_apiserver_cpu_per_min / max(floor.idle_apiserver_cpu_per_min, 1e-9),
    }
    lines = [
        f"## N = {ours.n} — {context['date']}",
        "",
        *(f"- {k}: {v}" for k, v in context.items() if k != "date"),
        "",
        "| operator | N | burst s | all Jobs s | create→Job p50 ms | p99 ms | pod done→phase p50 ms "
        "| p99 ms | CPU s (burst) | CPU ms/job | CPU s (all) | peak RSS MiB | req/job (burst) "
        "| req/job (all) | idle CPU s/min | idle cores per 1,000 jobs | API server idle cores per "
        "1,000 jobs | idle req/min | log line→status p50 ms | p99 ms |",
        "|" + "---|" * 20,
        row(ours),
        row(floor),
        "",
        "Ours / floor: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratio.items()),
        "",
        *(f"- {r.label}: {note}" for r in results for note in r.notes),
        "",
    ]
    return "\n".join(lines)


def ours_then_floor(
    plane: ControlPlane,
    workdir: Path,
    args: argparse.Namespace,
    run_one: Callable[..., Any],
    row: Callable[[Any], str],
    namespace_prefix: str,
    kinds: str,
    log_prefix: str,
) -> tuple[Any, Any]:
    """Ours, then the floor, each through the counting proxy: ``run_one(label, start_operator, plane,
    proxy, args, workdir, ours)`` in namespace ``<prefix>-<label>``. On a failure, what ``kinds`` look
    like there and the operators' log tails; their logs are kept in ``args.logs`` either way. Stops
    the control plane."""
    proxy = CountingProxy(plane.url, plane.ca.cert)
    operators = Operators(proxy, "", workdir)
    try:
        operators.token = chart_token(plane, workdir)
        ours = run_one("ours", operators.start_ours, plane, proxy, args, workdir, True)
        operators.stop()
        print(row(ours), flush=True)
        floor = run_one("floor", operators.start_floor, plane, proxy, args, workdir, False)
        operators.stop()
        print(row(floor), flush=True)
        ours.notes += [f"log: {p}" for p in operators.problems("ours.log")]
        floor.notes += [f"log: {p}" for p in operators.problems("floor.log")]
        assert not plane.failed_components(), plane.diagnostics()
    except BaseException:
        print(plane.diagnostics())
        for label in ("ours", "floor"):
            ns = f"{namespace_prefix}-{label}"
            print(plane.kubectl("get", kinds, "-n", ns, "-o", "wide", check=False).stdout)
        for log in ("ours.log", "floor.log"):
            if (workdir / log).exists():
                print(f"----- {log} -----\n{(workdir / log).read_text(errors='replace')[-4000:]}")
        raise
    finally:
        operators.stop()
        proxy.close()
        plane.__exit__()
        args.logs.mkdir(parents=True, exist_ok=True)
        for log in ("ours.log", "floor.log"):
            if (workdir / log).exists():
                shutil.copy(workdir / log, args.logs / f"{log_prefix}-{log}")
    return ours, floor


def start_plane(workdir: Path, cpu_nodes: int, gpu_nodes: int) -> tuple[ControlPlane, float]:
    start = time.monotonic()
    plane = ControlPlane(workdir / "plane", cpu_nodes=cpu_nodes, gpu_nodes=gpu_nodes).__enter__()
    plane.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
    plane.wait_established()
    return plane, time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=100, help="FineTuneJobs per operator")
    parser.add_argument("--gpu-nodes", type=int, default=100)
    parser.add_argument("--cpu-nodes", type=int, default=0, help="0: enough for 2 N pods")
    parser.add_argument("--idle", type=float, default=60, help="seconds of the idle-cost sample")
    parser.add_argument("--workers", type=int, default=16, help="POSTs in flight during the burst")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--logs", type=Path, default=Path(tempfile.gettempdir()) / "operator-scale-logs")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "SCALE_RESULTS.md")
    args = parser.parse_args()
    cpu_nodes = args.cpu_nodes or max(4, math.ceil(2 * args.n / PODS_PER_NODE))

    load_before = uptime()
    with tempfile.TemporaryDirectory(prefix="operator-scale-") as tmp:
        workdir = Path(tmp)
        plane, plane_s = start_plane(workdir, cpu_nodes, args.gpu_nodes)
        print(f"control plane with {cpu_nodes}+{args.gpu_nodes} nodes in {plane_s:.0f} s", flush=True)
        ours, floor = ours_then_floor(
            plane, workdir, args, run_one, row, "scale", "ftj,jobs,pods", f"n{args.n}"
        )
    context = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nodes": f"{cpu_nodes} kwok CPU + {args.gpu_nodes} kwok GPU, control plane up in {plane_s:.0f} s",
        "load before": load_before,
        "load after": uptime(),
        "settings": f"ours: {OPERATOR_ENV}; {args.workers} POSTs in flight; idle sample {args.idle:.0f} s",
        # kwok follows each log with one inotify instance, all on this host (a real node has its own).
        "fs.inotify.max_user_instances": Path("/proc/sys/fs/inotify/max_user_instances").read_text().strip(),
    }
    text = report([ours, floor], context)
    print(text)
    if not args.out.exists():
        args.out.write_text("# Operator scale benchmark (benchmarks/operator_scale.py)\n\n")
    with args.out.open("a") as out:
        out.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
