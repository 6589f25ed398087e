"""Chaos for the operator, seeded: SIGKILL (the OOM killer, a node loss) at random points of a burst
of FineTuneJobs and of their status transitions, and the death of the active replica of two peered
ones. Whatever the kill interrupted, every FineTuneJob ends with exactly its children (one -validate
Job, one -train Job, one ConfigMap, none recreated), the phase it should have, and a bounded number
of events.

The seed is KUBETUNE_CHAOS_SEED (default 11) and printed, so that a failure can be replayed. Kill
points are counts of what the operator has done (the k-th Job created, the k-th FineTuneJob Running),
polled fast, not wall-clock sleeps; only the kill right after a validation pod ends waits a seeded
fraction of a second, to land on either side of the training Job's creation.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from controlplane import Cluster
from fleet_helpers import (
    RESULT,
    assert_children_and_events,
    burst_manifest,
    jobs,
    log_is_clean,
    phases,
    running_pod,
)
from ftj_helpers import ROOT, bind_claims
from operator_process import Operator

SEED = int(os.environ.get("KUBETUNE_CHAOS_SEED", "11"))
TIMEOUT = 60  # a loaded 2-core machine, an operator restarting after each kill
BURST = 20


@pytest.fixture
def rng() -> random.Random:
    print(f"KUBETUNE_CHAOS_SEED={SEED}")
    return random.Random(SEED)


@pytest.fixture
def chaos_operator(cluster: Cluster, operator_kubeconfig: Path, tmp_path: Path) -> Iterator[Operator]:
    """The `operator` fixture with a 1 s resync: twenty jobs re-read every 0.3 s would be a load
    test of the 2-core machine rather than of the operator."""
    op = Operator(
        operator_kubeconfig, cluster.ns, tmp_path / "operator.log", {"KUBETUNE_RESYNC_SECONDS": "1"}
    )
    op.start()
    yield op
    op.stop()
    log_is_clean(op)


class Chaos:
    """Kills and restarts the operator when a count reaches the next seeded kill point."""

    def __init__(self, op: Operator, cluster: Cluster) -> None:
        self.op, self.cluster, self.kills = op, cluster, 0
        self.uids: dict[str, str] = {}

    def restart(self) -> None:
        self.op.kill()
        self.kills += 1
        self.op.start()

    def remember_uids(self) -> None:
        """Each child's uid when first seen: a child deleted and made again would show a new one."""
        for job in self.cluster.list("jobs.batch", self.cluster.ns):
            uid = self.uids.setdefault(job["metadata"]["name"], job["metadata"]["uid"])
            assert uid == job["metadata"]["uid"], f"{job['metadata']['name']} was recreated"

    def kill_at(self, points: list[int], count: Callable[[], int], what: str) -> None:
        for point in sorted(points):
            self.cluster.wait_for(
                lambda p=point: count() >= p, timeout=TIMEOUT, interval=0.05, message=f"{point} {what}"
            )
            self.remember_uids()
            self.restart()

    def wait(self, predicate: Callable[[], Any], message: str) -> Any:
        try:
            return self.cluster.wait_for(predicate, timeout=TIMEOUT, interval=0.2, message=message)
        except AssertionError:
            print(self.op.logs()[-6000:])
            raise


def test_burst_of_jobs_survives_sigkills_at_seeded_points(
    cluster: Cluster, chaos_operator: Operator, rng: random.Random
) -> None:
    started = time.monotonic()
    bind_claims(cluster)
    chaos = Chaos(chaos_operator, cluster)
    names = [f"chaos-{i:02d}" for i in range(BURST)]
    cluster.kubectl("apply", "-f", "-", input=burst_manifest(names))

    # 1. While the burst's validation Jobs are being created.
    chaos.kill_at(rng.sample(range(0, BURST), 2), lambda: len(jobs(cluster, "-validate")), "validate Jobs")
    pods = chaos.wait(
        lambda: (
            all(running_pod(cluster, f"{n}-validate") for n in names)
            and {n: running_pod(cluster, f"{n}-validate") for n in names}
        ),
        "every validation pod Running",
    )

    # 2. Between a validation pod's end and its training Job's creation (and the status write).
    order = list(names)
    rng.shuffle(order)
    kill_after = set(rng.sample(range(BURST), 3))
    for i, name in enumerate(order):
        pod = pods[name]["metadata"]["name"]
        cluster.finish_pod(cluster.ns, pod, 0, json.dumps({"metrics": {}}))
        if i in kill_after:
            time.sleep(rng.uniform(0.0, 0.8))  # a seeded point either side of the training Job's POST
            chaos.remember_uids()
            chaos.restart()

    # 3. During the Pending -> Running transitions of the training pods.
    chaos.kill_at(
        [rng.randrange(1, BURST)], lambda: list(phases(cluster).values()).count("Running"), "Running"
    )
    train = chaos.wait(
        lambda: (
            all(running_pod(cluster, f"{n}-train") for n in names)
            and {n: running_pod(cluster, f"{n}-train") for n in names}
        ),
        "every training pod Running",
    )
    chaos.wait(lambda: set(phases(cluster).values()) == {"Running"}, "every FineTuneJob Running")

    # 4. While the results are read and the jobs turn Succeeded.
    kill_point = rng.randrange(1, BURST)
    for i, name in enumerate(order):
        cluster.finish_pod(cluster.ns, train[name]["metadata"]["name"], 0, json.dumps(RESULT))
        if i == kill_point:
            chaos.restart()
    final = chaos.wait(lambda: set((p := phases(cluster)).values()) == {"Succeeded"} and p, "all Succeeded")
    assert sorted(final) == names
    for name in names:
        status = cluster.get("ftj", cluster.ns, name)["status"]
        assert status["accuracy"] == pytest.approx(0.95), (name, status)
        assert status["result"]["adapterUri"] == RESULT["adapterUri"], (name, status)
    chaos.remember_uids()
    assert_children_and_events(cluster, names)
    assert chaos.kills == 2 + 3 + 1 + 1  # every planned kill happened
    print(f"{chaos.kills} SIGKILLs, {time.monotonic() - started:.1f} s")


# -- two replicas, Kopf peering ---------------------------------------------------------------------
PEERING_CRDS = ROOT / "charts/kubetune/crds/kopf-peerings.yaml"
PEERING = "kubetune-chaos"


class PeeredOperator(Operator):
    """`kubetune operator -n <ns>` without --standalone: one of several replicas, Kopf's peering
    electing the active one (the chart's Deployment with replicas > 1)."""

    def __init__(self, kubeconfig: Path, namespace: str, log_path: Path, pod: str, priority: int) -> None:
        super().__init__(
            kubeconfig,
            namespace,
            log_path,
            {
                "POD_ID": pod,  # Kopf's identity in the peering object, as the chart sets it
                "KUBETUNE_PEERING_NAME": PEERING,
                "KUBETUNE_PEERING_PRIORITY": str(priority),
                "KUBETUNE_PEERING_LIFETIME_SECONDS": "8",
                "KUBETUNE_RESYNC_SECONDS": "1",
            },
            standalone=False,
        )
        self.pod = pod


@pytest.fixture
def replicas(
    cluster: Cluster, operator_kubeconfig: Path, tmp_path: Path
) -> Iterator[tuple[PeeredOperator, PeeredOperator]]:
    # Cluster-scoped and idempotent: what `helm install` puts first (the chart's crds/).
    cluster.plane.kubectl("apply", "--server-side", "-f", str(PEERING_CRDS))
    cluster.plane.wait_established()
    # The namespaced peering object the chart creates per watched namespace (templates/peering.yaml).
    cluster.kubectl(
        "apply",
        "-f",
        "-",
        input=yaml.safe_dump(
            {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": PEERING}}
        ),
    )
    active = PeeredOperator(operator_kubeconfig, cluster.ns, tmp_path / "a.log", "operator-a", 200)
    standby = PeeredOperator(operator_kubeconfig, cluster.ns, tmp_path / "b.log", "operator-b", 100)
    active.start()
    standby.start()
    yield active, standby
    for op in (active, standby):
        op.stop()
        log_is_clean(op)


def peers(cluster: Cluster) -> dict[str, Any]:
    return (cluster.get("kopfpeerings.kopf.dev", cluster.ns, PEERING) or {}).get("status") or {}


def peering_state(op: Operator) -> str:
    """What the replica's last peering decision was: paused (also before any) or active."""
    state = "paused"
    for line in op.logs().splitlines():
        if "Resuming operations" in line:
            state = "active"
        elif "Pausing operations" in line or "Pausing all operators" in line:
            state = "paused"
    return state


def test_standby_takes_over_when_the_active_replica_is_killed(
    cluster: Cluster, replicas: tuple[PeeredOperator, PeeredOperator], rng: random.Random
) -> None:
    active, standby = replicas
    bind_claims(cluster)
    chaos = Chaos(active, cluster)
    chaos.wait(lambda: {"operator-a", "operator-b"} <= set(peers(cluster)), "both replicas in the peering")
    # Kopf starts every peered replica paused; the highest priority one resumes. One started a moment
    # earlier may resume too until it sees the other's first keep-alive, then pauses in its favour.
    chaos.wait(lambda: peering_state(active) == "active", "the higher-priority replica active")
    chaos.wait(lambda: peering_state(standby) == "paused", "the lower-priority replica standing by")

    names = [f"peer-{i}" for i in range(4)]
    cluster.kubectl("apply", "-f", "-", input=burst_manifest(names))
    pods = chaos.wait(
        lambda: (
            all(running_pod(cluster, f"{n}-validate") for n in names)
            and {n: running_pod(cluster, f"{n}-validate") for n in names}
        ),
        "every validation pod Running",
    )
    assert "created the data-validation Job" in active.logs()
    assert peering_state(standby) == "paused"  # it stood by
    assert "created the data-validation Job" not in standby.logs()
    chaos.remember_uids()

    # The active replica dies between validation and training: some training Jobs may exist, some not.
    cut = rng.randrange(1, len(names))
    for name in names[:cut]:
        cluster.finish_pod(cluster.ns, pods[name]["metadata"]["name"], 0, json.dumps({"metrics": {}}))
    time.sleep(rng.uniform(0.0, 0.8))  # a seeded point either side of the training Jobs' POSTs
    active.kill()
    for name in names[cut:]:
        cluster.finish_pod(cluster.ns, pods[name]["metadata"]["name"], 0, json.dumps({"metrics": {}}))

    # Kopf's peering: the dead replica's keep-alive expires (8 s lifetime), the standby resumes.
    chaos.wait(lambda: peering_state(standby) == "active", "the standby resuming")
    chaos.op = standby
    train = chaos.wait(
        lambda: (
            all(running_pod(cluster, f"{n}-train") for n in names)
            and {n: running_pod(cluster, f"{n}-train") for n in names}
        ),
        "every training pod Running",
    )
    for name in names:
        cluster.finish_pod(cluster.ns, train[name]["metadata"]["name"], 0, json.dumps(RESULT))
    chaos.wait(lambda: set(phases(cluster).values()) == {"Succeeded"}, "all Succeeded after the takeover")
    assert "operator-a" not in peers(cluster)  # the dead replica's entry was cleaned out
    chaos.remember_uids()
    assert_children_and_events(cluster, names)
