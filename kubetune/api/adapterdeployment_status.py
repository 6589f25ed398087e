"""AdapterDeployment.status: what serves, what served, the canary and the retrains (written by the
operator only)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from kubetune.api.common import (
    ApiModel,
    Condition,
)
from kubetune.api.finetunejob import EvalMetric, TaskType

AdapterPhase = Literal["Pending", "Progressing", "Available", "Degraded"]
HISTORY_LIMIT = 10
# The server holds one task of each kind (ServeConfig.tasks); with two kinds that is one extra task.
EXTRA_TASKS_LIMIT = 1


class ActiveAdapter(ApiModel):
    """The adapter the pods serve now."""

    version: Annotated[str | None, Field(description="Served version.")] = None
    uri: Annotated[str | None, Field(description="Where it was loaded from.")] = None
    digest: Annotated[str | None, Field(description="sha256 of the adapter weights.")] = None
    fine_tune_job: Annotated[str | None, Field(description="The FineTuneJob that produced it.")] = None
    accuracy: Annotated[float | None, Field(description="Its evaluation score.")] = None


class ServedTask(ApiModel):
    """An extra task and the adapter its pods serve now."""

    name: Annotated[
        str, Field(description="Model id of the adapter (spec.extraTasks[].name).", max_length=63)
    ]
    task: Annotated[TaskType, Field(description="causal-lm or sequence-classification.")]
    version: Annotated[str, Field(description="Served version.", max_length=128)]
    uri: Annotated[str, Field(description="Where it was loaded from.", max_length=2048)]
    digest: Annotated[str | None, Field(description="sha256 of the adapter weights.")] = None
    fine_tune_job: Annotated[str | None, Field(description="The FineTuneJob that produced it.")] = None
    accuracy: Annotated[float | None, Field(description="Its evaluation score.")] = None


HistoryOutcome = Literal["RolledOut", "Skipped"]


class HistoryEntry(ApiModel):
    """A version that was rolled out, or skipped by rollout.requireImprovement (bounded, newest last).

    Every version has its own URI (a run never writes over another's adapter) and the digest the
    servers check before they serve it, so pinning a version (rollback) serves exactly those weights."""

    version: str
    uri: str
    digest: str | None = None
    fine_tune_job: str | None = None
    accuracy: float | None = None
    deployed_at: Annotated[
        str | None, Field(description="When it rolled out.", json_schema_extra={"format": "date-time"})
    ] = None
    outcome: Annotated[
        HistoryOutcome,
        Field(description="RolledOut (served), or Skipped (scored worse than the serving version)."),
    ] = "RolledOut"
    reason: Annotated[
        str | None,
        Field(description="Why it was skipped, e.g. accuracy 0.983 < serving 0.992.", max_length=512),
    ] = None
    skipped_at: Annotated[
        str | None, Field(description="When it was skipped.", json_schema_extra={"format": "date-time"})
    ] = None


RetrainOutcome = Literal[
    "Pending", "Running", "Promoted", "Rejected", "Inconclusive", "WaitingForLabels", "Failed"
]


class RetrainRecord(ApiModel):
    """One retraining FineTuneJob and what became of it."""

    fine_tune_job: str
    created_at: Annotated[str, Field(json_schema_extra={"format": "date-time"})]
    trigger: Annotated[str, Field(description="Which trigger fired, with its values.")]
    outcome: Annotated[
        RetrainOutcome | None,
        Field(
            description="Promoted (the interval's lower bound clears minImprovement), Rejected (its upper "
            "bound is below minImprovement), Inconclusive (the interval straddles it: the champion keeps "
            "serving, the next retrain has more labels), WaitingForLabels (fewer held-out rows than "
            "gate.minRows: undecided, label more), Failed (the job failed)."
        ),
    ] = "Pending"
    metric: Annotated[EvalMetric | None, Field(description="The gate metric compared.")] = None
    rows: Annotated[
        int | None, Field(description="Held-out rows both adapters were scored on (n).", ge=0)
    ] = None
    difference: Annotated[
        float | None,
        Field(description="Challenger minus champion share of those rows answered right.", ge=-1, le=1),
    ] = None
    lower_bound: Annotated[
        float | None, Field(description="Lower end of the difference's 95% interval.", ge=-1, le=1)
    ] = None
    upper_bound: Annotated[
        float | None, Field(description="Upper end of the difference's 95% interval.", ge=-1, le=1)
    ] = None
    challenger: Annotated[float | None, Field(description="The new adapter's gate metric.")] = None
    champion: Annotated[float | None, Field(description="The serving adapter's gate metric, same rows.")] = (
        None
    )


class CanaryStatus(ApiModel):
    """A new adapter version on a share of the pods, watched before it replaces the champion."""

    version: Annotated[str, Field(description="Candidate version on the canary pods.")]
    uri: Annotated[str, Field(description="Where it is loaded from.")]
    digest: str | None = None
    fine_tune_job: str | None = None
    accuracy: float | None = None
    step: Annotated[int, Field(description="Index into spec.rollout.steps.", ge=0)] = 0
    weight: Annotated[int, Field(description="Percent of pods on the canary at this step.", ge=0, le=100)] = 0
    step_started_at: Annotated[
        str | None,
        Field(
            description="When this step's canary pods were all ready.",
            json_schema_extra={"format": "date-time"},
        ),
    ] = None


class AdapterDeploymentStatus(ApiModel):
    """Observed state of an AdapterDeployment."""

    phase: Annotated[AdapterPhase | None, Field(description="Lifecycle phase.")] = None
    message: Annotated[str | None, Field(description="One-line summary.")] = None
    observed_generation: Annotated[int | None, Field(description="Generation last acted on.", ge=0)] = None
    conditions: Annotated[
        list[Condition], Field(description="Ready, Available, Progressing, AdapterResolved.")
    ] = []
    active_adapter: Annotated[ActiveAdapter | None, Field(description="The adapter served now.")] = None
    extra_tasks: Annotated[
        list[ServedTask],
        Field(description="The adapters of spec.extraTasks served now.", max_length=EXTRA_TASKS_LIMIT),
    ] = []
    replicas: Annotated[
        int,
        Field(
            description="Pods of the stable track (the scale subresource's status.replicas; a canary's "
            "pods come on top).",
            ge=0,
        ),
    ] = 0
    selector: Annotated[
        str | None,
        Field(description="Label selector of the stable track's pods (the scale subresource's selector)."),
    ] = None
    ready_replicas: Annotated[int, Field(description="Serving pods that are ready.", ge=0)] = 0
    updated_replicas: Annotated[int, Field(description="Pods on the current template.", ge=0)] = 0
    history: Annotated[
        list[HistoryEntry],
        Field(
            description=f"Last {HISTORY_LIMIT} versions rolled out or skipped, each with its own URI and "
            "digest.",
            max_length=HISTORY_LIMIT,
        ),
    ] = []
    drift: Annotated[float | None, Field(description="Latest drift score of the watched kind.")] = None
    accuracy: Annotated[float | None, Field(description="Latest rolling accuracy from feedback.")] = None
    estimated_accuracy: Annotated[
        float | None, Field(description="Latest label-free accuracy estimate (kubetune_accuracy_estimated).")
    ] = None
    last_evaluated: Annotated[
        str | None,
        Field(description="When triggers were last evaluated.", json_schema_extra={"format": "date-time"}),
    ] = None
    retrains: Annotated[
        list[RetrainRecord],
        Field(description=f"Last {HISTORY_LIMIT} retraining FineTuneJobs.", max_length=HISTORY_LIMIT),
    ] = []
    promoted: Annotated[
        str | None, Field(description="The retraining FineTuneJob whose adapter was promoted last.")
    ] = None
    canary: Annotated[CanaryStatus | None, Field(description="The canary in progress, if any.")] = None
    last_retrain_request: Annotated[
        str | None,
        Field(
            description="The last kubetune.dev/retrain-requested annotation value handled (once per value)."
        ),
    ] = None
    rolled_back: Annotated[
        list[Annotated[str, Field(max_length=128)]],
        Field(
            description="Versions a canary rejected; they are not rolled out again.", max_length=HISTORY_LIMIT
        ),
    ] = []
