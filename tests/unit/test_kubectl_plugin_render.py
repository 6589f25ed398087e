"""`kubectl kubetune` renderers and version choices: pure functions on status dicts as kubectl prints them."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from kubetune.kubectl_plugin import render, versions
from kubetune.kubectl_plugin.args import build_parser, duration_seconds
from kubetune.kubectl_plugin.errors import PluginError
from kubetune.kubectl_plugin.explain import explain_failure
from kubetune.kubectl_plugin.pods import failed_pod, newest_pod, termination_of
from kubetune.kubectl_plugin.unreconciled import unreconciled

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def cond(type_: str, status: str, reason: str, message: str = "") -> dict[str, Any]:
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": "2026-01-01T11:50:00Z",
    }


def ftj(name: str, status: dict[str, Any], created: str = "2026-01-01T11:00:00Z") -> dict[str, Any]:
    meta = {"name": name, "namespace": "default", "creationTimestamp": created}
    return {"kind": "FineTuneJob", "metadata": meta, "spec": {"suspend": False}, "status": status}


def adep(status: dict[str, Any], replicas: int = 2, **spec: Any) -> dict[str, Any]:
    meta = {"name": "support-intents", "namespace": "default"}
    return {
        "kind": "AdapterDeployment",
        "metadata": meta,
        "spec": {"replicas": replicas, **spec},
        "status": status,
    }


RUNNING = ftj(
    "support-intents",
    {
        "phase": "Running",
        "message": "step 40/120, loss 0.5123, ETA 80s",
        "progress": "40/120",
        "loss": 0.512345,
        "conditions": [cond("Running", "True", "Training", "step 40/120")],
    },
)
SUCCEEDED = ftj(
    "support-intents-v2",
    {"phase": "Succeeded", "progress": "120/120", "loss": 0.0812, "accuracy": 0.9125},
    created="2026-01-01T11:58:30Z",
)
FAILED = ftj(
    "support-triage",
    {
        "phase": "Failed",
        "message": "training failed (BackoffLimitExceeded): CUDA out of memory",
        "conditions": [
            cond("SpecValid", "True", "Valid"),
            cond(
                "Failed", "True", "BackoffLimitExceeded", "training failed (BackoffLimitExceeded): CUDA OOM"
            ),
        ],
        "result": {"reason": "CUDA out of memory"},
    },
)


@pytest.mark.parametrize(
    ("progress", "bar"),
    [
        ("40/120", "[###-------] 40/120"),
        ("0/120", "[----------] 0/120"),
        ("120/120", "[##########] 120/120"),
        ("130/120", "[##########] 130/120"),
        (None, "-"),
        ("starting", "starting"),
        ("3/0", "3/0"),
    ],
)
def test_progress_bar(progress: str | None, bar: str) -> None:
    assert render.progress_bar(progress) == bar


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(5, "5s"), (119, "119s"), (330, "5m30s"), (600, "10m"), (7800, "130m"), (4 * 3600 + 60, "4h1m"),
     (30 * 3600, "30h"), (3 * 86400 + 3600, "3d1h"), (20 * 86400, "20d"), (-10, "<invalid>")],
)  # fmt: skip
def test_human_duration_matches_kubectl_age(seconds: float, text: str) -> None:
    assert render.human_duration(seconds) == text


def test_finetunejob_table_has_bar_loss_accuracy_and_age() -> None:
    lines = render.finetunejob_table([RUNNING, SUCCEEDED], NOW).splitlines()
    assert lines[0].split() == ["NAME", "PHASE", "PROGRESS", "LOSS", "ACCURACY", "AGE"]
    assert lines[1].split() == ["support-intents", "Running", "[###-------]", "40/120", "0.5123", "-", "60m"]
    assert lines[2].split()[-3:] == ["0.0812", "0.9125", "90s"]
    # columns line up: every row starts its PROGRESS cell at the header's offset
    offset = lines[0].index("PROGRESS")
    assert lines[1][offset] == "[" and lines[2][offset] == "["


def test_finetunejob_table_with_namespaces_and_no_status() -> None:
    fresh = {"metadata": {"name": "new", "namespace": "team-a"}, "spec": {}}
    lines = render.finetunejob_table([fresh], NOW, namespaces=True).splitlines()
    assert lines[0].startswith("NAMESPACE")
    assert lines[1].split() == ["team-a", "new", "-", "-", "-", "-", "-"]


def test_adapterdeployment_table() -> None:
    live = adep(
        {
            "phase": "Available",
            "activeAdapter": {"version": "support-intents-1a2b3c4d", "accuracy": 0.91},
            "readyReplicas": 2,
            "accuracy": 0.884,
            "drift": 0.0712,
        }
    )
    fresh = adep({"phase": "Progressing", "activeAdapter": {"version": "v1", "accuracy": 0.91}}, replicas=3)
    fresh["metadata"]["name"] = "fresh"
    canary = adep(
        {
            "phase": "Progressing",
            "activeAdapter": {"version": "v1"},
            "canary": {"version": "v2", "weight": 25},
        }
    )
    canary["metadata"]["name"] = "canary"
    scaled = adep({"phase": "Available", "readyReplicas": 4}, replicas=5, autoscaling={"maxReplicas": 8})
    scaled["metadata"]["name"] = "scaled"
    lines = render.adapterdeployment_table([live, fresh, canary, scaled]).splitlines()
    assert lines[0].split() == ["NAME", "PHASE", "ACTIVE", "VERSION", "ACCURACY", "READY", "DRIFT"]
    assert lines[1].split() == [
        "support-intents",
        "Available",
        "support-intents-1a2b3c4d",
        "0.8840",
        "2/2",
        "0.071",
    ]
    assert lines[2].split() == ["fresh", "Progressing", "v1", "0.9100", "(eval)", "0/3", "-"]
    assert "v1 (canary v2 25%)" in lines[3]  # fmt: skip
    assert "4/5 (auto 1-8)" in lines[4]  # desired pods come from the autoscaler through the scale subresource


def test_watch_line_and_key() -> None:
    line = render.watch_line(RUNNING, NOW)
    assert "Running  [###-------] 40/120  loss 0.5123" in line
    assert render.watch_key(RUNNING) == ("Running", "40/120", 0.512345)
    assert "accuracy 0.9125" in render.watch_line(SUCCEEDED, NOW)


@pytest.mark.parametrize(
    ("event", "text"),
    [
        ({"event": "step", "step": 40, "totalSteps": 120, "loss": 0.51234, "lr": 0.0002, "etaSeconds": 150.0,
          "epoch": 1.0, "batchIds": [1, 2]}, "step 40/120  loss 0.5123  lr 2.00e-04  epoch 1.00  eta 2m30s"),
        ({"event": "phase", "phase": "Training"}, "== Training"),
        ({"event": "checkpoint", "step": 50, "time": "t", "path": "/out/ckpt-50"},
         "checkpoint at step 50 -> /out/ckpt-50"),
        ({"event": "eval", "stage": "after", "metrics": {"accuracy": 0.9125}}, "eval after: accuracy=0.9125"),
        ({"event": "result", "adapterUri": "pvc://out/a", "metrics": {"after_accuracy": 0.9}},
         "result: adapter pvc://out/a  after_accuracy=0.9000"),
        ({"event": "result", "reason": "gate: accuracy 0.61 < 0.85"},
         "result: failed: gate: accuracy 0.61 < 0.85"),
        ({"event": "custom", "a": 1}, "custom: a=1"),
    ],
)  # fmt: skip
def test_log_line_pretty_prints_events(event: dict[str, Any], text: str) -> None:
    assert render.log_line(json.dumps(event) + "\n") == text


@pytest.mark.parametrize("line", ["plain text from pip", '{"not": "an event"}', "{broken json", "[1, 2]"])
def test_log_line_keeps_other_lines(line: str) -> None:
    assert render.log_line(line + "\n") == line


def trainer_pod(name: str, created: str, terminated: dict[str, Any] | None, phase: str = "Running") -> dict:
    statuses = [{"name": "trainer", "state": {"terminated": terminated} if terminated else {"running": {}}}]
    return {
        "metadata": {"name": name, "creationTimestamp": created},
        "status": {"phase": phase, "containerStatuses": statuses},
    }


def test_pod_choice_and_termination_message() -> None:
    report = {"reason": "CUDA out of memory", "metrics": {"before_accuracy": 0.12}}
    old = trainer_pod(
        "j-train-a", "2026-01-01T11:00:00Z",
        {"exitCode": 1, "reason": "Error", "finishedAt": "2026-01-01T11:10:00Z", "message": "boom"}, "Failed",
    )  # fmt: skip
    new = trainer_pod(
        "j-train-b", "2026-01-01T11:11:00Z",
        {"exitCode": 1, "reason": "Error", "finishedAt": "2026-01-01T11:20:00Z",
         "message": json.dumps(report)},
        "Failed",
    )  # fmt: skip
    ok = trainer_pod("j-train-c", "2026-01-01T11:21:00Z", None)
    assert newest_pod([old, ok, new])["metadata"]["name"] == "j-train-c"
    assert newest_pod([]) is None
    failed = failed_pod([old, ok, new])
    assert failed is not None and failed["metadata"]["name"] == "j-train-b"
    term = termination_of(failed)
    assert term is not None and term.result is not None
    assert term.result.reason == "CUDA out of memory" and term.exit_code == 1
    crashed = termination_of(old)
    assert crashed is not None and crashed.result is None and crashed.raw == "boom"
    assert termination_of(ok) is None


def test_explain_failure_shows_conditions_events_and_termination() -> None:
    event = {
        "type": "Warning",
        "reason": "BackoffLimitExceeded",
        "message": "Running -> Failed: training failed",
        "lastTimestamp": "2026-01-01T11:55:00Z",
        "count": 2,
    }
    report = {"reason": "CUDA out of memory", "metrics": {"before_accuracy": 0.125}}
    pod = trainer_pod(
        "support-triage-train-x", "2026-01-01T11:00:00Z",
        {"exitCode": 1, "reason": "Error", "finishedAt": "2026-01-01T11:54:00Z",
         "message": json.dumps(report)},
        "Failed",
    )  # fmt: skip
    text = explain_failure(FAILED, [event], termination_of(pod), NOW)
    assert text.splitlines()[0] == "FineTuneJob default/support-triage: Failed"
    assert "training failed (BackoffLimitExceeded): CUDA out of memory" in text
    assert (
        "Failed      True     BackoffLimitExceeded   training failed (BackoffLimitExceeded): CUDA OOM" in text
    )
    event_row = next(line for line in text.splitlines() if "(x2)" in line)
    assert event_row.split()[:4] == ["5m", "(x2)", "Warning", "BackoffLimitExceeded"]
    assert event_row.endswith("BackoffLimitExceeded   Running -> Failed: training failed")
    assert "pod support-triage-train-x, exit code 1, Error, finished 6m ago" in text
    assert "reason:  CUDA out of memory" in text and "before_accuracy=0.1250" in text


def test_explain_failure_without_pod_falls_back_to_status_result() -> None:
    text = explain_failure(FAILED, [], None, NOW)
    assert "no failed pod left" in text and "status.result.reason: CUDA out of memory" in text
    assert "Events:\n  (none" in text


def test_explain_failure_of_a_job_that_did_not_fail_says_so() -> None:
    text = explain_failure(RUNNING, [], None, NOW)
    assert "has not failed (phase Running)" in text and "Conditions" not in text


HISTORY = adep(
    {
        "activeAdapter": {"version": "v3"},
        "history": [{"version": v, "uri": f"pvc://out/{v}"} for v in ("v1", "v2", "v3")],
        "canary": {"version": "v4", "uri": "pvc://out/v4"},
    }
)


def test_rollback_target_is_the_entry_before_the_active_one() -> None:
    assert versions.rollback_target(HISTORY) == "v2"
    assert versions.rollback_target(HISTORY, "v1") == "v1"
    repinned = adep({**HISTORY["status"], "activeAdapter": {"version": "v2"}, "rolledBack": ["v1"]})
    with pytest.raises(PluginError, match="no version before v2"):
        versions.rollback_target(repinned)
    with pytest.raises(PluginError, match="serves no adapter yet"):
        versions.rollback_target(adep({}))


def test_promote_accepts_history_versions_only() -> None:
    assert versions.check_promotable(HISTORY, "v2") == "v2"
    with pytest.raises(PluginError, match=r"not in status.history .*\(known: v1, v2, v3\)"):
        versions.check_promotable(HISTORY, "v9")
    with pytest.raises(PluginError, match="v4 is the canary"):
        versions.check_promotable(HISTORY, "v4")


def test_global_flags_are_accepted_before_and_after_the_subcommand() -> None:
    parser = build_parser()
    before = parser.parse_args(["--context", "prod", "-n", "ml", "get", "ftj"])
    after = parser.parse_args(["get", "ftj", "--context", "prod", "-n", "ml"])
    for args in (before, after):
        assert (args.context, args.namespace, args.what) == ("prod", "ml", ["ftj"])
    assert duration_seconds("500ms") == 0.5 and duration_seconds("2m") == 120 and duration_seconds("3") == 3


PVC_MESSAGE = (
    'pod support-intents-validate-x: 0/6 nodes are available: persistentvolumeclaim "kubetune-data" not found'
)
STUCK = ftj(
    "support-intents",
    {
        "phase": "Pending",
        "observedGeneration": 1,
        "message": PVC_MESSAGE,
        "conditions": [
            cond("PodsHealthy", "False", "Unschedulable", PVC_MESSAGE),
            cond("Ready", "False", "Unschedulable"),
        ],
    },
)


def test_explain_failure_of_a_stuck_job_shows_the_pods_reason_and_events() -> None:
    event = {
        "type": "Warning",
        "reason": "Unschedulable",
        "message": PVC_MESSAGE,
        "lastTimestamp": "2026-01-01T11:59:00Z",
    }
    text = explain_failure(STUCK, [event], None, NOW)
    assert f"Why: it is stuck (Unschedulable): {PVC_MESSAGE}" in text
    assert any(line.split()[:3] == ["PodsHealthy", "False", "Unschedulable"] for line in text.splitlines())
    assert any(line.split()[:3] == ["60s", "Warning", "Unschedulable"] for line in text.splitlines())
    assert "no failed pod left" not in text  # nothing failed: no termination message to look for


def test_explain_failure_of_a_retried_attempt_shows_the_termination_message() -> None:
    message = "attempt 1/4 failed: RuntimeError: CUDA out of memory; retrying"
    retrying = ftj(
        "support-intents",
        {
            "phase": "Pending",
            "observedGeneration": 1,
            "message": message,
            "conditions": [cond("Ready", "False", "Retrying", message)],
        },
    )
    pod = trainer_pod(
        "support-intents-train-a", "2026-01-01T11:00:00Z",
        {"exitCode": 1, "reason": "Error", "finishedAt": "2026-01-01T11:58:00Z",
         "message": "RuntimeError: CUDA out of memory"},
        "Failed",
    )  # fmt: skip
    text = explain_failure(retrying, [], termination_of(pod), NOW)
    assert f"Why: an attempt failed and is retried: {message}" in text
    assert (
        "pod support-intents-train-a, exit code 1, Error" in text
        and "RuntimeError: CUDA out of memory" in text
    )


def test_an_object_no_operator_reconciled_is_called_out_after_a_grace_period() -> None:
    fresh = ftj("support-intents", {}, created="2026-01-01T11:59:55Z")
    assert unreconciled(fresh, NOW) is None  # an operator gets a moment first
    old = ftj("support-intents", {}, created="2026-01-01T11:58:00Z")
    old["metadata"]["namespace"] = "team-a"
    hint = unreconciled(old, NOW)
    assert hint is not None and hint.startswith(
        "FineTuneJob team-a/support-intents: no kubetune operator has reconciled it in 2m"
    )
    assert "does it watch namespace team-a?" in hint and "watchNamespaces" in hint and "-n team-a" in hint
    assert unreconciled({**old, "status": {"observedGeneration": 1}}, NOW) is None
    adep_hint = unreconciled(
        {
            **adep({}),
            "metadata": {"name": "a", "namespace": "n", "creationTimestamp": "2026-01-01T11:00:00Z"},
        },
        NOW,
    )
    assert adep_hint is not None and adep_hint.startswith("AdapterDeployment n/a: no kubetune operator")
    text = explain_failure(old, [], None, NOW, hint)
    assert text.splitlines()[-1] == hint and "Conditions" not in text
