"""API faults a real server will not produce on demand, from the fault proxy in front of it: the
operator backs off, retries and converges — exactly one child each, status right, the process alive.

The operator talks to the proxy with the chart's ServiceAccount token; the proxy forwards to the real
kube-apiserver, so everything that is not an injected fault is the real server's answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from controlplane import Cluster
from controlplane.faultproxy import Fault, FaultProxy
from ftj_helpers import INTENTS, TIMEOUT, apply, bind_claims, finish_job, wait_job, wait_phase, wait_pod
from operator_process import Operator


@pytest.fixture
def proxied_operator(
    cluster: Cluster, proxy: FaultProxy, operator_kubeconfig: Path, tmp_path: Path
) -> Iterator[Operator]:
    token = yaml.safe_load(operator_kubeconfig.read_text())["users"][0]["user"]["token"]
    op = Operator(
        proxy.kubeconfig(tmp_path / "proxied.kubeconfig", token, cluster.ns),
        cluster.ns,
        tmp_path / "operator.log",
    )
    yield op
    alive = op.proc is not None and op.proc.poll() is None
    op.stop()
    assert alive, f"the operator died:\n{op.logs()[-4000:]}"
    # Injected faults are retried as temporary errors (no traceback), after Retry-After where given.
    assert "Traceback" not in op.logs(), op.logs()[-4000:]


def jobs_path(cluster: Cluster) -> str:
    return f"/apis/batch/v1/namespaces/{cluster.ns}/jobs"


def ftj_path(cluster: Cluster) -> str:
    return f"/apis/kubetune.dev/v1alpha1/namespaces/{cluster.ns}/finetunejobs"


def test_429_with_retry_after_on_child_creation_is_retried_once_allowed(
    cluster: Cluster, proxy: FaultProxy, proxied_operator: Operator
) -> None:
    throttle = proxy.inject(Fault("POST", jobs_path(cluster) + "$", status=429, times=3, retry_after=1))
    bind_claims(cluster)
    name = apply(cluster, INTENTS)
    proxied_operator.start()
    wait_job(cluster, f"{name}-validate")
    assert throttle.hits == 3
    assert proxy.count("POST", jobs_path(cluster) + "$") == 4  # 3 refused, then the one that worked
    wait_phase(cluster, name, "ValidatingData", proxied_operator)
    assert [j["metadata"]["name"] for j in cluster.list("jobs.batch", cluster.ns)] == [f"{name}-validate"]


def test_500s_and_409s_on_status_patches_converge(
    cluster: Cluster, proxy: FaultProxy, proxied_operator: Operator
) -> None:
    status = ftj_path(cluster) + r"/[^/]+/status"
    proxy.inject(Fault("PATCH", status, status=500, times=2))
    proxy.inject(Fault("PATCH", status, status=409, times=2))
    bind_claims(cluster)
    name = apply(cluster, INTENTS)
    proxied_operator.start()
    finish_job(cluster, f"{name}-validate")
    wait_pod(cluster, f"{name}-train")
    wait_phase(cluster, name, "Running", proxied_operator)
    assert proxy.count("PATCH", status) >= 5  # the four refused ones were retried
    assert len(cluster.list("jobs.batch", cluster.ns)) == 2


def test_a_cut_watch_is_resumed_and_later_changes_are_seen(
    cluster: Cluster, proxy: FaultProxy, proxied_operator: Operator
) -> None:
    watch = (
        ftj_path(cluster).replace(f"/namespaces/{cluster.ns}", f"(/namespaces/{cluster.ns})?") + r"\?.*watch"
    )
    cut = proxy.inject(Fault("GET", watch, kind="cut-watch", cut_after=1, times=2))
    bind_claims(cluster)
    name = apply(cluster, INTENTS)
    proxied_operator.start()
    wait_job(cluster, f"{name}-validate")
    cluster.wait_for(lambda: cut.hits == 2, timeout=TIMEOUT, message="both watches cut")
    # After the cuts, a spec change must still reach the Job: the operator re-watched.
    cluster.kubectl("patch", "ftj", name, "--type=merge", "-p", '{"spec": {"suspend": true}}')
    cluster.wait_for(
        lambda: cluster.get("jobs.batch", cluster.ns, f"{name}-validate")["spec"]["suspend"] is True,
        timeout=TIMEOUT,
        message="suspend propagated after the watch was cut",
    )


def test_410_gone_on_a_watch_makes_the_operator_relist(
    cluster: Cluster, proxy: FaultProxy, proxied_operator: Operator
) -> None:
    watch = (
        ftj_path(cluster).replace(f"/namespaces/{cluster.ns}", f"(/namespaces/{cluster.ns})?") + r"\?.*watch"
    )
    gone = proxy.inject(Fault("GET", watch, kind="gone-watch", times=2))
    bind_claims(cluster)
    proxied_operator.start()
    cluster.wait_for(lambda: gone.hits == 2, timeout=TIMEOUT, message="two watches answered 410 Gone")
    name = apply(cluster, INTENTS)  # created after the 410s: seen only by the new watch
    wait_job(cluster, f"{name}-validate")
    wait_phase(cluster, name, "ValidatingData", proxied_operator)
    # Dozens of resyncs have run by now (0.3 s): none may have patched the Job, whose spec is as built.
    assert proxy.count("PATCH", jobs_path(cluster)) == 0
