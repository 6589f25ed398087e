"""FineTuneJob status from the observed state of its children (pure, level-based).

Nothing here asks "did the create handler run?" and nothing trusts the stored phase: phase,
conditions and progress are recomputed from what the Jobs and Pods look like now. A stored terminal
phase is final only while the children agree (no unfinished Job left: a finished job never trains
again); one that a running Job contradicts was written by someone else and is corrected, with an event.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from kubetune.api.common import Condition, ConditionStatus
from kubetune.api.finetunejob import (
    TERMINAL_PHASES,
    CheckpointInfo,
    FineTuneJobSpec,
    FineTuneJobStatus,
    Phase,
)
from kubetune_operator.attempts import (
    Retry,
    failure_count,
    job_condition,
    preemption_count,
    retry_of,
)
from kubetune_operator.conditions import get_condition, set_condition
from kubetune_operator.pod_problems import PodProblem, first_problem, problem_family
from kubetune_operator.progress import Progress
from kubetune_operator.termination import newest_result

EventType = Literal["Normal", "Warning"]


@dataclass(frozen=True)
class Observed:
    """Everything the status depends on, read by the handler."""

    generation: int | None
    spec: FineTuneJobSpec | None
    spec_error: str | None = None
    validate_job: dict[str, Any] | None = None
    validate_pods: list[dict[str, Any]] = field(default_factory=list)
    train_job: dict[str, Any] | None = None
    train_pods: list[dict[str, Any]] = field(default_factory=list)
    progress: Progress = field(default_factory=Progress)
    # The training Job this run had is gone (deleted, not by us) ...
    train_job_deleted: bool = False
    # ... and this reconcile created it again.
    train_job_recreated: bool = False


def unfinished(job: dict[str, Any] | None) -> bool:
    """A Job that still runs or may run: not Complete, not Failed, not being deleted."""
    return (
        job is not None
        and not job.get("metadata", {}).get("deletionTimestamp")
        and job_condition(job, "Complete") is None
        and job_condition(job, "Failed") is None
    )


def children_agree_terminal(obs: Observed) -> bool:
    """A stored terminal phase stands only when no unfinished Job contradicts it."""
    return not unfinished(obs.validate_job) and not unfinished(obs.train_job)


@dataclass(frozen=True)
class Event:
    type: EventType
    reason: str
    message: str


SIGNIFICANT_DIGITS = 4


def significant(value: float, digits: int = SIGNIFICANT_DIGITS) -> float:
    """``value`` to ``digits`` significant digits, as printer columns show it (0.9166666 -> 0.9167)."""
    return float(f"{value:.{digits}g}")


@dataclass
class _Verdict:
    phase: Phase
    reason: str
    message: str
    problem: PodProblem | None = None  # a pod that cannot run, in the scheduler's or kubelet's words


def _stuck(phase: Phase, problem: PodProblem) -> _Verdict:
    return _Verdict(phase, problem.reason, problem.text, problem)


def _verdict(obs: Observed, prev: FineTuneJobStatus) -> _Verdict:
    spec = obs.spec
    if spec is None:
        return _Verdict("Failed", "InvalidSpec", obs.spec_error or "invalid spec")
    suspended = spec.suspend
    vjob = obs.validate_job
    if obs.train_job is None:
        if vjob is None:
            return _Verdict(
                "Suspended" if suspended else "Pending", "Creating", "creating the data-validation Job"
            )
        if failed := job_condition(vjob, "Failed"):
            result = newest_result(obs.validate_pods)
            detail = result.reason if result and result.reason else failed.get("message", "")
            return _Verdict("Failed", "InvalidData", f"dataset validation failed: {detail}".strip())
        if job_condition(vjob, "Complete") is None:
            if suspended:
                return _Verdict("Suspended", "Suspended", "spec.suspend is true")
            if problem := first_problem(obs.validate_pods):
                return _stuck("Pending", problem)
            if retry := retry_of(vjob, obs.validate_pods):
                return _Verdict("ValidatingData", "Retrying", f"data validation {retry.message}")
            # A pod that has ended while the Job controller has not yet given its verdict is still
            # validating (else the phase would flap back to Pending for that moment).
            if _job_started(vjob):
                return _Verdict("ValidatingData", "ValidatingData", "validating every dataset row (no GPU)")
            return _Verdict("Pending", "ValidationPending", "waiting for the data-validation pod")
        if obs.train_job_deleted and prev.preemptions + 1 > spec.max_preemptions:
            return _Verdict(
                "Failed",
                "TooManyPreemptions",
                f"the training Job was deleted: {prev.preemptions + 1} preemptions exceed "
                f"spec.maxPreemptions={spec.max_preemptions}",
            )
        return _Verdict("Suspended" if suspended else "Pending", "DataValidated", "creating the training Job")

    job = obs.train_job
    if obs.train_job_recreated:
        return _Verdict(
            "Pending",
            "JobRecreated",
            f"the training Job was deleted; created it again (preemption {prev.preemptions + 1} of at "
            f"most {spec.max_preemptions}), resuming from the newest checkpoint",
        )
    if job.get("metadata", {}).get("deletionTimestamp"):
        return _Verdict("Pending", "JobDeleting", "waiting for the deleted training Job to go")
    if job_condition(job, "Complete"):
        result = newest_result(obs.train_pods)
        return _Verdict("Succeeded", "Completed", _success_message(result, spec))
    if failed := job_condition(job, "Failed"):
        result = newest_result(obs.train_pods)
        detail = result.reason if result and result.reason else failed.get("message", "")
        reason = failed.get("reason") or "Failed"
        return _Verdict("Failed", reason, f"training failed ({reason}): {detail}".strip())
    preemptions = max(prev.preemptions, prev.preemptions_before_job + preemption_count(obs.train_pods))
    if preemptions > spec.max_preemptions:
        return _Verdict(
            "Failed",
            "TooManyPreemptions",
            f"{preemptions} preemptions exceed spec.maxPreemptions={spec.max_preemptions}",
        )
    if job.get("spec", {}).get("suspend"):
        if suspended:
            return _Verdict("Suspended", "Suspended", "spec.suspend is true")
        if spec.resources.queue_name:
            return _Verdict(
                "Pending", "Queued", f"waiting for Kueue admission in queue {spec.resources.queue_name}"
            )
        return _Verdict("Pending", "Resuming", "resuming the training Job")
    if problem := first_problem(obs.train_pods):
        return _stuck("Pending", problem)
    retry = retry_of(job, obs.train_pods)
    running = [p for p in obs.train_pods if p.get("status", {}).get("phase") == "Running"]
    succeeded = [p for p in obs.train_pods if p.get("status", {}).get("phase") == "Succeeded"]
    # A pod that succeeded before the Job controller marks the Job Complete: still Running, not
    # back to PodsPending for that moment.
    if ((job.get("status", {}).get("active") or 0) > 0 and running) or succeeded:
        return _Verdict("Running", "Training", _running_message(obs.progress, retry))
    if retry is not None:
        return _Verdict("Pending", "Retrying", retry.message)
    return _Verdict("Pending", "PodsPending", "waiting for training pods to be scheduled")


def _job_started(job: dict[str, Any]) -> bool:
    """Whether a pod of the Job runs or has ended, by the Job controller's own counters (a pod that
    ended shows in uncountedTerminatedPods, then succeeded/failed, before the verdict condition)."""
    status = job.get("status", {})
    uncounted = status.get("uncountedTerminatedPods") or {}
    return any((status.get(k) or 0) > 0 for k in ("active", "succeeded", "failed")) or any(
        uncounted.get(k) for k in ("succeeded", "failed")
    )


def _success_message(result: Any, spec: FineTuneJobSpec) -> str:
    if result is None:
        return "training completed"
    metric = spec.gate_metric
    value = result.metrics.get(f"after_{metric}", result.metrics.get(metric))
    text = "training completed"
    if value is not None:
        text += f"; {metric}={value:.4f}"
    if result.adapter_uri:
        text += f"; adapter {result.adapter_uri}"
    return text


def _running_message(progress: Progress, retry: Retry | None) -> str:
    text = "training"
    if progress.fraction is not None:
        text = f"step {progress.fraction}"
        if progress.loss is not None:
            text += f", loss {progress.loss:.4f}"
        if progress.eta_seconds is not None:
            text += f", ETA {int(progress.eta_seconds)}s"
    if retry is not None:
        text += f" (attempt {retry.failed + 1}/{retry.attempts}; attempt {retry.failed} failed"
        text += f": {retry.detail})" if retry.detail else ")"
    return text


def _bool(value: bool) -> ConditionStatus:
    return "True" if value else "False"


def derive_status(obs: Observed, prev: FineTuneJobStatus, now: str) -> tuple[FineTuneJobStatus, list[Event]]:
    """The next status and the events for what changed since ``prev``."""
    if prev.phase in TERMINAL_PHASES and children_agree_terminal(obs):
        return prev.model_copy(update={"observed_generation": obs.generation}), []
    verdict = _verdict(obs, prev)
    corrected = prev.phase in TERMINAL_PHASES and verdict.phase != prev.phase
    gen = obs.generation
    status = prev.model_copy(deep=True)
    status.phase = verdict.phase
    status.message = verdict.message
    status.observed_generation = gen

    conds = status.conditions
    conds = set_condition(
        conds,
        "SpecValid",
        _bool(obs.spec is not None),
        "Valid" if obs.spec is not None else "InvalidSpec",
        "" if obs.spec is not None else verdict.message,
        now,
        gen,
    )
    validated = obs.train_job is not None or job_condition(obs.validate_job, "Complete") is not None
    if obs.spec is not None:
        data_status: ConditionStatus = (
            "True" if validated else ("False" if verdict.reason == "InvalidData" else "Unknown")
        )
        conds = set_condition(
            conds,
            "DataValidated",
            data_status,
            "Validated" if validated else verdict.reason,
            "every dataset row is valid" if validated else verdict.message,
            now,
            gen,
        )
    if obs.spec is not None and verdict.phase not in TERMINAL_PHASES and _pods_observed(obs, verdict, conds):
        # A finished job keeps the last word on its pods: a deadline that ran out on a stuck pod
        # still shows why it was stuck.
        conds = _set_pods_healthy(conds, verdict.problem, now, gen)
    conds = set_condition(
        conds,
        "Running",
        _bool(verdict.phase == "Running"),
        verdict.reason,
        verdict.message if verdict.phase == "Running" else "",
        now,
        gen,
    )
    conds = set_condition(
        conds,
        "Suspended",
        _bool(verdict.phase == "Suspended"),
        verdict.reason,
        verdict.message if verdict.phase == "Suspended" else "",
        now,
        gen,
    )
    if verdict.phase in TERMINAL_PHASES:
        conds = set_condition(
            conds, "Succeeded", _bool(verdict.phase == "Succeeded"), verdict.reason, verdict.message, now, gen
        )
        conds = set_condition(
            conds,
            "Failed",
            _bool(verdict.phase != "Succeeded"),
            verdict.reason,
            verdict.message if verdict.phase != "Succeeded" else "",
            now,
            gen,
        )
    # Ready is the one condition GitOps tools read: True only when the adapter exists.
    conds = set_condition(
        conds, "Ready", _bool(verdict.phase == "Succeeded"), verdict.reason, verdict.message, now, gen
    )
    status.conditions = conds

    if obs.train_job_deleted and (obs.train_job_recreated or verdict.phase == "Failed"):
        status.preemptions_before_job = prev.preemptions + 1
        status.preemptions = max(status.preemptions, status.preemptions_before_job)
    if obs.train_job is not None:
        status.job_name = obs.train_job.get("metadata", {}).get("name")
        job_status = obs.train_job.get("status", {})
        status.start_time = status.start_time or job_status.get("startTime")
        status.attempts = max(status.attempts, len(obs.train_pods))
        status.failures = max(status.failures, failure_count(obs.train_pods))
        status.preemptions = max(
            status.preemptions, status.preemptions_before_job + preemption_count(obs.train_pods)
        )
    _apply_progress(status, obs.progress)
    if verdict.phase in TERMINAL_PHASES:
        status.completion_time = (obs.train_job or {}).get("status", {}).get("completionTime") or now
        pods = obs.train_pods if obs.train_job is not None else obs.validate_pods
        result = newest_result(pods)
        if result is not None:
            status.result = result
            metric = obs.spec.gate_metric if obs.spec else "accuracy"
            value = result.metrics.get(f"after_{metric}", result.metrics.get(metric))
            status.accuracy = significant(value) if value is not None else status.accuracy
            # The trainer's own last loss, not the last step the log follower happened to stream.
            final_loss = result.metrics.get("train_loss")
            status.loss = significant(final_loss) if final_loss is not None else status.loss
        if verdict.phase == "Succeeded" and status.progress and "/" in status.progress:
            total = status.progress.split("/", 1)[1]
            status.progress = f"{total}/{total}"
    events = _events(prev, status, verdict)
    if corrected:
        events.insert(
            0,
            Event(
                "Warning",
                "StatusCorrected",
                f"status.phase {prev.phase} was not written by kubetune (its children say "
                f"{verdict.phase}: {verdict.message}); corrected",
            ),
        )
    return status, events


def _apply_progress(status: FineTuneJobStatus, progress: Progress) -> None:
    if progress.fraction is not None:
        status.progress = progress.fraction
    if progress.loss is not None:
        status.loss = significant(progress.loss)
    if progress.checkpoint_step is not None:
        status.last_checkpoint = CheckpointInfo(step=progress.checkpoint_step, time=progress.checkpoint_time)


def _set_pods_healthy(
    conds: list[Condition], problem: PodProblem | None, now: str, gen: int | None
) -> list[Condition]:
    """PodsHealthy: False with the stuck pod's own reason and message, True when no pod is stuck."""
    if problem is None:
        return set_condition(conds, "PodsHealthy", "True", "Healthy", "", now, gen)
    return set_condition(conds, "PodsHealthy", "False", problem.reason, problem.text, now, gen)


def _pods_observed(obs: Observed, verdict: _Verdict, conds: list[Condition]) -> bool:
    """Whether this pass has evidence about the pods: no pod in view (a watch cache being re-listed,
    a pod replaced) says nothing, and must not clear a stuck pod's condition only to report it again."""
    pods = obs.train_pods if obs.train_job is not None else obs.validate_pods
    return (
        bool(pods)
        or verdict.problem is not None
        or verdict.phase == "Suspended"  # no pods by design
        or get_condition(conds, "PodsHealthy") is None
    )


def _new_problem(prev: FineTuneJobStatus, problem: PodProblem | None) -> bool:
    """A stuck pod whose problem was not reported yet (one event per distinct problem, not per pass)."""
    if problem is None:
        return False
    before = get_condition(prev.conditions, "PodsHealthy")
    return (
        before is None
        or before.status != "False"
        or problem_family(before.reason or "") != problem_family(problem.reason)
    )


def _events(prev: FineTuneJobStatus, new: FineTuneJobStatus, verdict: _Verdict) -> list[Event]:
    events: list[Event] = []
    if verdict.problem is not None:
        # The pod's own reason, as a Warning, once per problem (a phase change to it says no more):
        # this is what `kubectl describe` and explain-failure show.
        if _new_problem(prev, verdict.problem):
            events.append(Event("Warning", verdict.reason, verdict.message))
    elif verdict.reason == "Retrying" and verdict.message != prev.message:
        events.append(Event("Warning", "Retrying", verdict.message))
    elif new.phase != prev.phase:
        kind: EventType = "Warning" if new.phase in ("Failed", "Cancelled") else "Normal"
        events.append(Event(kind, verdict.reason, f"{prev.phase or 'New'} -> {new.phase}: {verdict.message}"))
    if new.preemptions > prev.preemptions:
        events.append(
            Event(
                "Warning",
                "Preempted",
                f"training pod preempted or evicted ({new.preemptions} so far); "
                "it does not count as a failure",
            )
        )
    return events
