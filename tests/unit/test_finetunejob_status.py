"""Phase, conditions and events follow the children's observed state (level-based)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubetune_operator.conditions import get_condition
from kubetune_operator.progress import Progress, parse_progress
from kubetune_operator.status import Observed, derive_status

from kubetune.api.finetunejob import FineTuneJob, FineTuneJobStatus

ROOT = Path(__file__).resolve().parents[2]
SPEC = FineTuneJob.model_validate(
    yaml.safe_load((ROOT / "examples/k8s/finetunejob-support-intents.yaml").read_text())
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


# -- a pod that cannot run is shown in its own words ----------------------------------------------
PVC_MISSING = (
    '0/6 nodes are available: persistentvolumeclaim "kubetune-data" not found. '
    "preemption: 0/6 nodes are available: 6 Preemption is not helpful for scheduling."
)
STUCK = [
    ("Unschedulable", PVC_MISSING, None),
    ("Unschedulable", "0/6 nodes are available: pod has unbound immediate PersistentVolumeClaims.", None),
    ("CreateContainerConfigError", 'secret "hf-token" not found', "waiting"),
    ("ErrImagePull", 'failed to pull image "registry.example/trainer:9"', "waiting"),
    ("ImagePullBackOff", 'Back-off pulling image "registry.example/trainer:9"', "waiting"),
    ("InvalidImageName", 'Failed to apply default image tag "Bad:Image:": invalid reference', "waiting"),
    ("CrashLoopBackOff", "back-off 40s restarting failed container=trainer", "waiting"),
    ("RunContainerError", "exec: kubetune: executable file not found in $PATH", "waiting"),
]


def stuck_pod(name: str, reason: str, message: str, where: str | None, created: str = T0) -> dict[str, Any]:
    """A pod as the scheduler (PodScheduled=False) or the kubelet (a waiting container) left it."""
    status: dict[str, Any] = {"phase": "Pending", "conditions": []}
    if where is None:
        status["conditions"].append(
            {"type": "PodScheduled", "status": "False", "reason": reason, "message": message}
        )
    else:
        status["conditions"].append({"type": "PodScheduled", "status": "True"})
        status["containerStatuses"] = [
            {"name": "trainer", "state": {"waiting": {"reason": reason, "message": message}}}
        ]
    return {"metadata": {"name": name, "creationTimestamp": created}, "status": status}


def pods_healthy(status: FineTuneJobStatus):
    return get_condition(status.conditions, "PodsHealthy")


@pytest.mark.parametrize(("reason", "message", "where"), STUCK)
@pytest.mark.parametrize("stage", ["validate", "train"])
def test_a_stuck_pod_shows_its_own_reason_once(
    stage: str, reason: str, message: str, where: str | None
) -> None:
    stuck = stuck_pod(f"support-intents-{stage}-abc", reason, message, where)
    if stage == "validate":
        obs = Observed(1, SPEC, validate_job=job(active=1), validate_pods=[stuck])
        before, _ = step(Observed(1, SPEC, validate_job=job(active=1)))
    else:
        obs = Observed(1, SPEC, validate_job=COMPLETE, train_job=job(active=1), train_pods=[stuck])
        before, _ = step(Observed(1, SPEC, validate_job=COMPLETE, train_job=job(active=1)))
    assert pods_healthy(before).status == "True"

    status, events = step(obs, before)
    assert status.phase == "Pending"
    assert f"pod support-intents-{stage}-abc: " in status.message and message in status.message
    assert "waiting for" not in status.message and "validating" not in status.message
    cond = pods_healthy(status)
    assert (cond.status, cond.reason, cond.message) == ("False", reason, status.message)
    assert [(e.type, e.reason, e.message) for e in events] == [("Warning", reason, status.message)]
    # The next passes see the same stuck pod: no status change, no second event.
    again, events = step(obs, status)
    assert again == status and events == []


def test_stuck_events_follow_distinct_problems_and_healthy_again_clears_the_condition() -> None:
    def observed(*pods: dict[str, Any]) -> Observed:
        return Observed(1, SPEC, validate_job=COMPLETE, train_job=job(active=1), train_pods=list(pods))

    pulling, _ = step(observed(stuck_pod("p", "ErrImagePull", "pull failed", "waiting")))
    # The kubelet alternates ErrImagePull and ImagePullBackOff: one problem, no event per flip.
    backoff, events = step(observed(stuck_pod("p", "ImagePullBackOff", "back-off", "waiting")), pulling)
    assert pods_healthy(backoff).reason == "ImagePullBackOff" and events == []
    config, events = step(
        observed(stuck_pod("p", "CreateContainerConfigError", 'secret "x" not found', "w")), backoff
    )
    assert [e.reason for e in events] == ["CreateContainerConfigError"]
    # A normal wait (the image is being pulled) is not stuck.
    creating = stuck_pod("p", "ContainerCreating", "", "waiting")
    healthy, events = step(observed(creating), config)
    assert (
        pods_healthy(healthy).status == "True"
        and healthy.message == "waiting for training pods to be scheduled"
    )
    # A retry's newer pod speaks for the Job; a pod that ended is never stuck.
    old = stuck_pod("old", "ImagePullBackOff", "old", "waiting", created=T0)
    old["status"]["phase"] = "Failed"
    new = stuck_pod("new", "Unschedulable", PVC_MISSING, None, created=T1)
    status, _ = step(observed(old, new))
    assert status.message == f"pod new: {PVC_MISSING}"


def test_a_finished_job_keeps_the_last_word_on_its_stuck_pod() -> None:
    stuck = stuck_pod("p", "Unschedulable", PVC_MISSING, None)
    pending, _ = step(Observed(1, SPEC, validate_job=COMPLETE, train_job=job(active=1), train_pods=[stuck]))
    failed, _ = step(
        Observed(1, SPEC, validate_job=COMPLETE, train_job=job([("Failed", "DeadlineExceeded")])), pending
    )
    assert failed.phase == "Failed" and pods_healthy(failed).reason == "Unschedulable"


# -- a failed attempt that will be retried says so -------------------------------------------------
def failed_pod(name: str, message: str, finished: str) -> dict[str, Any]:
    state = {"terminated": {"exitCode": 1, "reason": "Error", "message": message, "finishedAt": finished}}
    return {
        "metadata": {"name": name, "creationTimestamp": T0},
        "status": {"phase": "Failed", "containerStatuses": [{"name": "trainer", "state": state}]},
    }


def retrying_job(
    failed: int, backoff_limit: int = 3, conditions: list[tuple[str, str]] = ()
) -> dict[str, Any]:
    tjob = job(conditions, active=1)
    tjob["spec"]["backoffLimit"] = backoff_limit
    tjob["status"]["failed"] = failed
    return tjob


def test_a_failed_attempt_that_will_be_retried_says_so() -> None:
    crashed = failed_pod(
        "t-1", "Traceback (most recent call last):\n  ...\nRuntimeError: CUDA out of memory", T1
    )
    waiting = {"metadata": {"name": "t-2", "creationTimestamp": T1}, "status": {"phase": "Pending"}}
    obs = Observed(1, SPEC, validate_job=COMPLETE, train_job=retrying_job(1), train_pods=[crashed, waiting])
    status, events = step(obs)
    assert (status.phase, status.failures) == ("Pending", 1)
    assert status.message == "attempt 1/4 failed: RuntimeError: CUDA out of memory; retrying"
    ready = get_condition(status.conditions, "Ready")
    assert (ready.reason, ready.message) == ("Retrying", status.message)
    assert [(e.type, e.reason) for e in events] == [("Warning", "Retrying")]
    assert step(obs, status) == (status, [])  # said once

    running = {**waiting, "status": {"phase": "Running"}}
    obs2 = Observed(1, SPEC, validate_job=COMPLETE, train_job=retrying_job(1), train_pods=[crashed, running])
    status2, _ = step(obs2, status)
    assert status2.phase == "Running"
    assert status2.message == "training (attempt 2/4; attempt 1 failed: RuntimeError: CUDA out of memory)"

    # A second failure: the newest failed pod's message, attempt 2/4.
    oom = failed_pod("t-2", "", "2026-01-01T00:09:00Z")
    oom["status"]["containerStatuses"][0]["state"]["terminated"].update(exitCode=137, reason="OOMKilled")
    obs3 = Observed(1, SPEC, validate_job=COMPLETE, train_job=retrying_job(2), train_pods=[crashed, oom])
    status3, events3 = step(obs3, status2)
    assert status3.message == "attempt 2/4 failed: trainer exited with code 137 (OOMKilled); retrying"
    assert [e.reason for e in events3] == ["Retrying"]


def test_no_retry_once_the_job_controller_has_given_up() -> None:
    crashed = failed_pod("t-1", "bad config", T1)
    for tjob in (retrying_job(1, conditions=[("FailureTarget", "PodFailurePolicy")]), retrying_job(4, 3)):
        status, _ = step(Observed(1, SPEC, validate_job=COMPLETE, train_job=tjob, train_pods=[crashed]))
        assert status.phase == "Pending" and "retrying" not in (status.message or "")


def test_a_failed_validation_attempt_that_will_be_retried_says_so() -> None:
    vjob = retrying_job(1, backoff_limit=2)
    crashed = failed_pod("v-1", "cannot open pvc://kubetune-data/train.jsonl: permission denied", T1)
    status, _ = step(Observed(1, SPEC, validate_job=vjob, validate_pods=[crashed]))
    assert status.phase == "ValidatingData"
    assert status.message == (
        "data validation attempt 1/3 failed: cannot open pvc://kubetune-data/train.jsonl: permission denied; "
        "retrying"
    )


# -- printer columns: short numbers, the final loss ----------------------------------------------
def test_accuracy_and_loss_are_rounded_and_the_final_loss_is_the_trainers() -> None:
    streamed = parse_progress('{"event":"step","step":110,"totalSteps":120,"loss":0.5123456789}')
    running, _ = step(
        Observed(
            1,
            SPEC,
            validate_job=COMPLETE,
            train_job=job(active=1),
            train_pods=[pod("Running")],
            progress=streamed,
        )
    )
    assert running.loss == 0.5123
    result = {"metrics": {"after_accuracy": 11 / 12, "train_loss": 0.0123456789}}
    done, _ = step(
        Observed(
            1, SPEC, validate_job=COMPLETE, train_job=COMPLETE,
            train_pods=[pod("Succeeded", json.dumps(result))], progress=streamed,
        ),
        running,
    )  # fmt: skip
    assert (done.accuracy, done.loss) == (0.9167, 0.01235)
    assert done.result.metrics["after_accuracy"] == 11 / 12  # the full value stays in the result


def test_a_pass_that_sees_no_pod_keeps_the_stuck_condition_and_reports_nothing_twice() -> None:
    # A watch cache being re-listed (or a pod being replaced) shows no pod for a moment: that is no
    # evidence that the stuck pod got well, so the condition stays and the problem is not re-reported.
    stuck = stuck_pod("p", "Unschedulable", PVC_MISSING, None)
    first, events = step(Observed(1, SPEC, validate_job=job(active=1), validate_pods=[stuck]))
    assert len(events) == 1
    gap, _ = step(Observed(1, SPEC, validate_job=job(active=1)), first)
    assert pods_healthy(gap).status == "False" and pods_healthy(gap) == pods_healthy(first)
    again, events = step(Observed(1, SPEC, validate_job=job(active=1), validate_pods=[stuck]), gap)
    assert again.message == first.message and events == []
    # Suspended: no pods by design, nothing is stuck.
    suspended = SPEC.model_copy(update={"suspend": True})
    paused, _ = step(Observed(1, suspended, validate_job=job(active=0, suspend=True)), again)
    assert paused.phase == "Suspended" and pods_healthy(paused).status == "True"
