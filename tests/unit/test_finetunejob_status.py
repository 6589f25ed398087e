"""Phase, conditions and events follow the children's observed state (level-based)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from kubetune_operator.conditions import get_condition
from kubetune_operator.progress import Progress, parse_progress
from kubetune_operator.status import Observed, derive_status

from kubetune.api.finetunejob import FineTuneJob, FineTuneJobStatus

ROOT = Path(__file__).resolve().parents[2]
SPEC = FineTuneJob.model_validate(
    yaml.safe_load((ROOT / "examples/finetunejob-support-intents.yaml").read_text())
).spec
T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"


def job(conditions: list[tuple[str, str]] = (), active: int = 0, suspend: bool = False) -> dict[str, Any]:
    return {
        "metadata": {"name": "support-intents-train"},
        "spec": {"suspend": suspend},
        "status": {
            "active": active,
            "startTime": T0,
            "conditions": [
                {"type": t, "status": "True", "reason": r, "message": f"{t} {r}"} for t, r in conditions
            ],
        },
    }


def pod(phase: str, message: str | None = None, disrupted: bool = False) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase, "conditions": []}
    if disrupted:
        status["conditions"].append({"type": "DisruptionTarget", "status": "True"})
    if message is not None:
        status["containerStatuses"] = [
            {
                "name": "trainer",
                "state": {"terminated": {"exitCode": 0, "message": message, "finishedAt": T1}},
            }
        ]
    return {"metadata": {"name": f"p-{phase}", "creationTimestamp": T0}, "status": status}


COMPLETE = job([("Complete", "Completed")])


def step(obs: Observed, prev: FineTuneJobStatus | None = None, now: str = T1):
    return derive_status(obs, prev or FineTuneJobStatus(), now)


def test_new_job_is_pending_then_validating_then_running_then_succeeded() -> None:
    s1, e1 = step(Observed(1, SPEC))
    assert s1.phase == "Pending" and e1[0].reason == "Creating"
    s2, _ = step(Observed(1, SPEC, validate_job=job(active=1)), s1)
    assert s2.phase == "ValidatingData"
    s3, _ = step(Observed(1, SPEC, validate_job=COMPLETE), s2)
    assert s3.phase == "Pending" and get_condition(s3.conditions, "DataValidated").status == "True"
    progress = parse_progress(
        '{"event":"step","step":40,"totalSteps":120,"loss":0.71,"etaSeconds":90}\n'
        '{"event":"checkpoint","step":40,"time":"2026-01-01T00:03:00Z"}'
    )
    s4, e4 = step(
        Observed(
            1,
            SPEC,
            validate_job=COMPLETE,
            train_job=job(active=1),
            train_pods=[pod("Running")],
            progress=progress,
        ),
        s3,
    )
    assert (s4.phase, s4.progress, s4.loss, s4.last_checkpoint.step) == ("Running", "40/120", 0.71, 40)
    assert "ETA 90s" in s4.message and e4[0].reason == "Training"
    result = {
        "adapterUri": "pvc://out/a",
        "digest": "sha256:" + "ab" * 32,
        "metrics": {"before_accuracy": 0.12, "after_accuracy": 0.95},
    }
    s5, e5 = step(
        Observed(
            1,
            SPEC,
            validate_job=COMPLETE,
            train_job=COMPLETE,
            train_pods=[pod("Succeeded", json.dumps(result))],
            progress=progress,
        ),
        s4,
    )
    assert s5.phase == "Succeeded" and s5.accuracy == 0.95 and s5.progress == "120/120"
    assert s5.result.adapter_uri == "pvc://out/a" and s5.completion_time == T1
    assert get_condition(s5.conditions, "Ready").status == "True"
    assert e5[0].type == "Normal" and "accuracy=0.9500" in e5[0].message


def test_a_pod_that_ended_before_its_jobs_verdict_does_not_flap_the_phase() -> None:
    # The kubelet reports the pod's end a moment before the Job controller marks the Job: the phase
    # must not step back to Pending in between (a status patch and an event each, and untrue).
    validating, _ = step(Observed(1, SPEC, validate_job=job(active=1)))
    ended = job()
    ended["status"]["uncountedTerminatedPods"] = {"succeeded": ["a-pod-uid"]}
    counted = job()
    counted["status"]["succeeded"] = 1
    for vjob in (ended, counted):
        still, events = step(Observed(1, SPEC, validate_job=vjob), validating)
        assert still.phase == "ValidatingData" and still == validating and events == []
    progress = parse_progress('{"event":"step","step":120,"totalSteps":120,"loss":0.2}')
    tjob, pods = job(active=1), [pod("Running")]
    s1, _ = step(Observed(1, SPEC, None, COMPLETE, [], tjob, pods, progress), validating)
    s2, events = step(Observed(1, SPEC, None, COMPLETE, [], job(), [pod("Succeeded", "{}")], progress), s1)
    assert s1.phase == s2.phase == "Running" and s2 == s1 and events == []
    # No pod started yet is what Pending means.
    assert step(Observed(1, SPEC, validate_job=job()))[0].phase == "Pending"


def test_terminal_phase_is_sticky() -> None:
    done = FineTuneJobStatus(phase="Succeeded", observed_generation=1)
    again, events = step(Observed(2, SPEC), done)
    assert again.phase == "Succeeded" and again.observed_generation == 2 and events == []


def test_data_validation_failure_reports_the_row() -> None:
    failed = job([("Failed", "PodFailurePolicy")])
    message = json.dumps({"reason": "train.jsonl row 17: field 'label' missing"})
    status, events = step(Observed(1, SPEC, validate_job=failed, validate_pods=[pod("Failed", message)]))
    assert status.phase == "Failed"
    assert "row 17: field 'label' missing" in status.message
    assert get_condition(status.conditions, "DataValidated").status == "False"
    assert events[0].type == "Warning" and events[0].reason == "InvalidData"


def test_training_failure_keeps_job_reason_and_trainer_reason() -> None:
    failed = job([("Failed", "DeadlineExceeded")])
    status, _ = step(
        Observed(
            1,
            SPEC,
            validate_job=COMPLETE,
            train_job=failed,
            train_pods=[pod("Failed", "Traceback...\nCUDA out of memory")],
        )
    )
    assert status.phase == "Failed"
    assert get_condition(status.conditions, "Failed").reason == "DeadlineExceeded"
    assert "CUDA out of memory" in status.message


def test_preemptions_are_counted_not_failures_and_bounded() -> None:
    pods = [pod("Failed", disrupted=True), pod("Running")]
    status, events = step(Observed(1, SPEC, validate_job=COMPLETE, train_job=job(active=1), train_pods=pods))
    assert (status.preemptions, status.failures, status.phase) == (1, 0, "Running")
    assert any(e.reason == "Preempted" for e in events)
    bounded = SPEC.model_copy(update={"max_preemptions": 2})
    many = [pod("Failed", disrupted=True) for _ in range(3)]
    status, _ = step(Observed(1, bounded, validate_job=COMPLETE, train_job=job(active=0), train_pods=many))
    assert status.phase == "Failed" and "maxPreemptions=2" in status.message


def test_suspend_and_kueue_queue() -> None:
    suspended = SPEC.model_copy(update={"suspend": True})
    status, _ = step(Observed(1, suspended, validate_job=COMPLETE, train_job=job(suspend=True)))
    assert status.phase == "Suspended"
    queued = SPEC.model_copy(update={"resources": SPEC.resources.model_copy(update={"queue_name": "q"})})
    status, _ = step(Observed(1, queued, validate_job=COMPLETE, train_job=job(suspend=True)))
    assert status.phase == "Pending" and "Kueue" in status.message


def test_deleted_training_job_is_recreated_as_a_preemption() -> None:
    running = FineTuneJobStatus(phase="Running", job_name="j-train", preemptions=1)
    recreated = Observed(
        1, SPEC, validate_job=COMPLETE, train_job=job(), train_job_deleted=True, train_job_recreated=True
    )
    status, events = step(recreated, running)
    assert status.phase == "Pending" and "created it again" in (status.message or "")
    assert events[0].reason == "JobRecreated" and events[0].type == "Normal"
    assert status.preemptions == status.preemptions_before_job == 2
    # the new Job's disrupted pods add to the earlier ones; the count never goes down
    status2, _ = step(
        Observed(
            1,
            SPEC,
            validate_job=COMPLETE,
            train_job=job(active=1),
            train_pods=[pod("Failed", disrupted=True)],
        ),
        status,
    )
    assert status2.preemptions == 3


def test_deleted_training_job_past_max_preemptions_fails() -> None:
    bounded = SPEC.model_copy(update={"max_preemptions": 1})
    running = FineTuneJobStatus(phase="Running", job_name="j-train", preemptions=1)
    status, _events = step(Observed(1, bounded, validate_job=COMPLETE, train_job_deleted=True), running)
    assert status.phase == "Failed" and "maxPreemptions=1" in (status.message or "")
    assert status.preemptions == 2


def test_terminal_phase_written_by_someone_else_is_corrected() -> None:
    forged = FineTuneJobStatus(phase="Succeeded", job_name="j-train")
    running = [pod("Running")]
    status, events = step(
        Observed(1, SPEC, validate_job=COMPLETE, train_job=job(active=1), train_pods=running), forged
    )
    assert status.phase == "Running"
    assert events[0].reason == "StatusCorrected" and events[0].type == "Warning"


def test_terminal_phase_stands_when_no_unfinished_job_contradicts_it() -> None:
    done = FineTuneJobStatus(phase="Succeeded", job_name="j-train")
    for obs in (Observed(2, SPEC), Observed(2, SPEC, validate_job=COMPLETE, train_job=COMPLETE)):
        status, events = step(obs, done)
        assert status.phase == "Succeeded" and status.observed_generation == 2 and events == []


def test_invalid_spec_fails_with_message() -> None:
    status, _events = step(Observed(3, None, spec_error="spec.lora.r: must be >= 1"))
    assert status.phase == "Failed" and status.observed_generation == 3
    assert get_condition(status.conditions, "SpecValid").message == "spec.lora.r: must be >= 1"


def test_last_transition_time_moves_only_on_flip() -> None:
    s1, _ = step(Observed(1, SPEC, validate_job=job(active=1)), now=T0)
    s2, _ = step(Observed(1, SPEC, validate_job=job(active=1)), s1, now=T1)
    assert get_condition(s2.conditions, "Ready").last_transition_time == T0
    assert s2 == s1  # nothing changed: no status write needed


def test_progress_parser_ignores_noise() -> None:
    text = (
        'plain text\n{"event":"step","step":"x"}\n{bad json\n[1,2]\n{"event":"step","step":5,"totalSteps":9}'
    )
    assert parse_progress(text) == Progress(step=5, total_steps=9)
