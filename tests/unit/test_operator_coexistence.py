"""Which kubetune peerings a starting operator would fight with, and which chart images differ
(operator/kubetune_operator/coexistence.py, pure parts)."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from kubetune_operator.coexistence import (
    Scope,
    conflict_message,
    conflicts,
    deployment_scope,
    image_differences,
    live_peers,
    operator_scope,
)
from kubetune_operator.settings import TAKEOVER_PRIORITY, OperatorSettings

from kubetune.cli import main

NOW = datetime.datetime(2026, 12, 7, 18, 0, 0, tzinfo=datetime.UTC)


def peering(kind: str, name: str, namespace: str | None, **peers: tuple[int, int, int]) -> dict[str, Any]:
    """peers: identity=(priority, lifetime, seconds since lastseen)."""
    meta: dict[str, Any] = {"name": name, **({"namespace": namespace} if namespace else {})}
    status = {
        identity: {
            "priority": prio,
            "lifetime": lifetime,
            "lastseen": (NOW - datetime.timedelta(seconds=ago)).isoformat(),
        }
        for identity, (prio, lifetime, ago) in peers.items()
    }
    return {"kind": kind, "metadata": meta, "status": status}


def test_live_peers_drops_expired_and_goodbye_entries() -> None:
    obj = peering("ClusterKopfPeering", "kubetune", None, a=(5, 60, 10), b=(7, 60, 61), c=(9, 0, 0))
    assert [(p.identity, p.priority) for p in live_peers(obj, NOW)] == [("a", 5)]
    # Kopf writes lastseen with a "Z" suffix too.
    obj["status"]["a"]["lastseen"] = "2026-12-07T17:59:50Z"
    assert live_peers(obj, NOW)[0].seconds_left == 50


def test_a_standalone_operator_conflicts_with_every_live_overlapping_peering() -> None:
    cluster = peering("ClusterKopfPeering", "kubetune", None, pod=(3, 60, 1))
    team_b = peering("KopfPeering", "kt", "team-b", pod=(3, 60, 1))
    mine = operator_scope(["team-a"], all_namespaces=False)
    found = conflicts([cluster, team_b], mine=mine, peering=None, now=NOW)
    assert [(c.kind, c.name) for c in found] == [("ClusterKopfPeering", "kubetune")]  # team-b: elsewhere
    assert found[0].join_command() == (
        f"kubetune operator --all-namespaces --peering=kubetune --priority={TAKEOVER_PRIORITY}"
    )
    everywhere = operator_scope([], all_namespaces=False)
    assert len(conflicts([cluster, team_b], mine=everywhere, peering=None, now=NOW)) == 2
    dead = peering("ClusterKopfPeering", "kubetune", None, pod=(3, 60, 120))
    assert conflicts([dead], mine=mine, peering=None, now=NOW) == []


def test_joining_the_same_peering_is_no_conflict_but_another_mode_or_name_is() -> None:
    cluster = peering("ClusterKopfPeering", "kubetune", None, pod=(3, 60, 1))
    team_a = peering("KopfPeering", "kubetune", "team-a", pod=(3, 60, 1))
    everywhere = Scope(True)
    assert conflicts([cluster], mine=everywhere, peering="kubetune", now=NOW) == []
    assert len(conflicts([cluster], mine=everywhere, peering="other", now=NOW)) == 1
    # Kopf's namespaced peering never sees a ClusterKopfPeering, nor the reverse.
    only_a = operator_scope(["team-a"], all_namespaces=False)
    assert conflicts([team_a], mine=only_a, peering="kubetune", now=NOW) == []
    assert [c.kind for c in conflicts([cluster, team_a], mine=only_a, peering="kubetune", now=NOW)] == [
        "ClusterKopfPeering"
    ]
    namespaced = conflicts([team_a], mine=everywhere, peering="kubetune", now=NOW)
    assert [c.kind for c in namespaced] == ["KopfPeering"]


def chart_deployment(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    container = {"name": "operator", "args": args, "env": [{"name": k, "value": v} for k, v in env.items()]}
    return {
        "metadata": {"name": "kubetune", "namespace": "kubetune"},
        "spec": {"template": {"spec": {"containers": [container]}}},
    }


def test_deployment_scope_reads_the_charts_arguments() -> None:
    assert deployment_scope(chart_deployment(["operator", "--all-namespaces"], {})) == Scope(True)
    scoped = deployment_scope(chart_deployment(["operator", "--namespace=a", "-n", "b"], {}))
    assert scoped == Scope(False, frozenset({"a", "b"}))


def test_image_differences_and_the_refusal_name_the_fix() -> None:
    settings = OperatorSettings(trainer_image="mine/trainer:1", server_image="chart/server:2")
    deployment = chart_deployment(
        ["operator", "--namespace=team-a"],
        {"KUBETUNE_TRAINER_IMAGE": "chart/trainer:2", "KUBETUNE_SERVER_IMAGE": "chart/server:2"},
    )
    assert image_differences(deployment, settings) == {"trainer_image": ("mine/trainer:1", "chart/trainer:2")}
    team_a = peering("KopfPeering", "kubetune", "team-a", **{"kubetune-abc": (42, 60, 1)})
    mine = Scope(False, frozenset({"team-a"}))
    found = conflicts([team_a], mine=mine, peering=None, now=NOW)
    message = conflict_message(found, mine, [deployment], "--trainer-image=chart/trainer:2")
    assert "KopfPeering 'kubetune' in namespace team-a: live peers kubetune-abc (priority 42)" in message
    join = f"kubetune operator --namespace=team-a --peering=kubetune --priority={TAKEOVER_PRIORITY}"
    assert f"{join} --trainer-image=chart/trainer:2\n" in message
    assert "kubectl scale deployment kubetune -n kubetune --replicas=0" in message


def test_cli_refuses_peering_flags_with_standalone_and_bad_settings(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["operator", "--standalone", "--peering", "kubetune"]) == 2
    assert "--standalone runs without it" in capsys.readouterr().err
    assert main(["operator", "-n", "a", "--priority", "-1", "--trainer-image", ""]) == 2
    err = capsys.readouterr().err
    assert "peering_priority: Input should be greater than or equal to 0" in err
    assert "trainer_image: String should have at least 1 character" in err
