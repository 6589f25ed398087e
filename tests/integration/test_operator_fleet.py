"""A fleet of FineTuneJobs through the real operator on the real control plane: a burst of 100 (1,000
behind the ``scale`` marker, `make test-scale`) created at once, every job validated, trained and
Succeeded while the training pods queue for the fake GPUs (24 of them: most jobs wait Pending for a
free one). Whatever the order, each job ends with exactly its children, a bounded number of events,
and the operator's API calls per job stay bounded — counted at the fault proxy in front of the API
server, so an operator that re-read every child on a timer (what it did before: ~93 requests per
job) fails here. Timings are printed, never asserted; benchmarks/operator_scale.py measures them
against a bare-Kopf floor."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from controlplane import Cluster
from controlplane.faultproxy import FaultProxy
from fleet_helpers import (
    RESULT,
    assert_children_and_events,
    burst_manifest,
    finish_running_pods,
    log_is_clean,
    phases,
)
from ftj_helpers import bind_claims
from operator_process import Operator

# The operator's requests per FineTuneJob over its whole life (create both Jobs and the ConfigMap,
# patch status once per phase, post its events, follow the trainer's log): ~10 today.
MAX_REQUESTS_PER_JOB = 20


@pytest.fixture
def counted_operator(
    cluster: Cluster, proxy: FaultProxy, operator_kubeconfig: Path, tmp_path: Path
) -> Iterator[Operator]:
    """The real operator with the chart's token, through the proxy that counts its requests; the
    production resync (minutes) and log reopen back-off, so what is counted is what a cluster sees."""
    token = yaml.safe_load(operator_kubeconfig.read_text())["users"][0]["user"]["token"]
    op = Operator(
        proxy.kubeconfig(tmp_path / "proxied.kubeconfig", token, cluster.ns),
        cluster.ns,
        tmp_path / "operator.log",
        {"KUBETUNE_ADAPTER_RESYNC_SECONDS": "10", "KUBETUNE_LOG_REOPEN_MAX_SECONDS": "60"},
    )
    op.start()
    yield op
    alive = op.proc is not None and op.proc.poll() is None
    op.stop()
    assert alive, f"the operator died:\n{op.logs()[-4000:]}"
    log_is_clean(op)


def by_kind(requests: Counter[str]) -> Counter[str]:
    """Requests by method and resource, namespaces and object names left out."""
    out: Counter[str] = Counter()
    for key, count in requests.items():
        method, path = key.split(" ", 1)
        path = re.sub(r"^/apis?/(?:[^/]+/)?v1[a-z0-9]*/", "", re.sub(r"/namespaces/[^/]+", "", path))
        out[method + " " + re.sub(r"^([a-z]+)/[^/]+", r"\1/{name}", path)] += count
    return out


def message_for(job: str) -> str:
    return json.dumps(RESULT if job.endswith("-train") else {"metrics": {}})


@pytest.mark.parametrize("n", [100, pytest.param(1000, marks=pytest.mark.scale)])
def test_a_burst_of_finetunejobs_all_succeed_with_exactly_their_children(
    cluster: Cluster, proxy: FaultProxy, counted_operator: Operator, n: int
) -> None:
    bind_claims(cluster)
    names = [f"fleet-{i:04d}" for i in range(n)]
    # Requests while idle before the burst: the operator's own list+watch set-up, not the jobs'.
    cluster.wait_for(
        lambda: proxy.count("GET", "/finetunejobs$") > 0, timeout=60, message="the operator watching"
    )
    time.sleep(2)  # its other watches (Jobs, Pods, Deployments) open alongside
    before = sum(proxy.requests.values())
    started = time.monotonic()
    cluster.kubectl("apply", "-f", "-", input=burst_manifest(names))
    cluster.wait_for(
        lambda: len(cluster.list("jobs.batch", cluster.ns)) >= n,
        timeout=120 + n * 0.2,
        interval=1,
        message=f"{n} validation Jobs",
    )
    all_jobs = time.monotonic() - started

    done: set[str] = set()

    def step() -> dict[str, str] | None:
        finish_running_pods(cluster, done, message_for)
        current = phases(cluster)
        return current if all(current.get(name) == "Succeeded" for name in names) else None

    try:
        final = cluster.wait_for(step, timeout=300 + n * 1.0, interval=1, message=f"{n} Succeeded")
    except AssertionError:
        print(counted_operator.logs()[-6000:])
        raise
    total = time.monotonic() - started
    assert sorted(final) == names
    assert_children_and_events(cluster, names)
    spent = sum(proxy.requests.values()) - before
    top = ", ".join(f"{key} {count / n:.1f}" for key, count in by_kind(proxy.requests).most_common(8))
    print(
        f"{n} jobs: all Jobs in {all_jobs:.1f} s, all Succeeded in {total:.1f} s, "
        f"{spent / n:.1f} requests/job ({top})"
    )
    assert spent / n <= MAX_REQUESTS_PER_JOB, f"{spent / n:.1f} requests per job; most: {top}"
