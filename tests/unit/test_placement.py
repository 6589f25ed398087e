"""Placement is a privilege: the operator creates pods only with priority classes and tolerations on the
chart's allow-lists, and keeps them off control-plane nodes unless allowed (issue 22)."""

from __future__ import annotations

import pytest
from kubetune_operator.placement import PlacementPolicy, placement_problem
from kubetune_operator.prometheus import answer_problem
from kubetune_operator.settings import OperatorSettings

from kubetune.api.scheduling import Toleration

CONTROL_PLANE = "node-role.kubernetes.io/control-plane"
POLICY = PlacementPolicy(priority_classes={"batch-low"}, toleration_keys={"nvidia.com/gpu", "dedicated"})


def toleration(key: str) -> Toleration:
    return Toleration(key=key, operator="Exists", effect="NoSchedule")


def test_what_the_allow_lists_name_passes() -> None:
    assert placement_problem("batch-low", [toleration("dedicated")], {"pool": "gpu"}, POLICY) is None
    assert placement_problem(None, [], {}, PlacementPolicy()) is None


@pytest.mark.parametrize(
    ("priority", "tolerations", "selector", "problem"),
    [
        (
            "batch-high",
            [],
            {},
            "priorityClassName 'batch-high' is not on the operator's allowedPriorityClasses",
        ),
        (None, [toleration("team-a")], {}, "tolerations[0] tolerates a taint ('team-a')"),
        (None, [toleration(CONTROL_PLANE)], {}, "tolerates a control-plane taint"),
        (None, [], {CONTROL_PLANE: ""}, "selects control-plane nodes"),
        (None, [], {"node-role.kubernetes.io/master": ""}, "selects control-plane nodes"),
    ],
)
def test_what_they_do_not_name_is_refused_with_the_field(
    priority: str | None, tolerations: list[Toleration], selector: dict[str, str], problem: str
) -> None:
    found = placement_problem(priority, tolerations, selector, POLICY)

    assert found is not None and problem in found and found.startswith("spec.resources.")


def test_a_listed_control_plane_key_allows_both_toleration_and_selector() -> None:
    policy = PlacementPolicy(toleration_keys={CONTROL_PLANE})

    assert placement_problem(None, [toleration(CONTROL_PLANE)], {CONTROL_PLANE: ""}, policy) is None


def test_the_allow_lists_come_from_the_chart_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBETUNE_ALLOWED_PRIORITY_CLASSES", '["batch-low"]')
    monkeypatch.setenv("KUBETUNE_ALLOWED_TOLERATION_KEYS", '["dedicated"]')

    policy = OperatorSettings().placement

    assert policy.priority_classes == {"batch-low"} and policy.toleration_keys == {"dedicated"}


def test_an_answer_from_another_service_is_not_repeated_into_status() -> None:
    secret = "token=abc123 user admin"

    problem = answer_problem(403, {"status": "error", "errorType": secret, "error": secret})

    assert secret not in problem and problem == "HTTP 403, not a Prometheus query answer"
