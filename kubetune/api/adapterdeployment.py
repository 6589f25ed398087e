"""AdapterDeployment: serve a base model with a LoRA adapter from a FineTuneJob or a URI."""

from __future__ import annotations

from itertools import pairwise
from typing import Annotated, Literal

from pydantic import Field, model_validator

from kubetune.api.adapterdeployment_status import EXTRA_TASKS_LIMIT, AdapterDeploymentStatus
from kubetune.api.autoscaling import AutoscalingSpec
from kubetune.api.common import (
    LABEL_RULE,
    AdapterUri,
    ApiModel,
    ObjectMeta,
    SecretKeyRef,
    check_resource_name,
    object_name,
)
from kubetune.api.finetunejob import BaseModelSpec, EvaluationSpec, FineTuneJobSpec, TaskType
from kubetune.api.monitoring import MonitoringSpec
from kubetune.api.rules import Checked, Rule
from kubetune.api.runtime import (
    IS_VLLM,
    VLLM_BASE,
    VLLM_NEEDS_GPU,
    VLLM_NO_CLASSIFIER,
    VLLM_NO_EXTRA_TASKS,
    VLLM_NO_INT4,
    RuntimeSpec,
)
from kubetune.api.scheduling import (
    CpuQuantity,
    GpuResource,
    MemoryQuantity,
    NodeSelector,
    PriorityClassName,
    Toleration,
)
from kubetune.api.uris import writes_into, writes_into_cel

RolloutStrategy = Literal["Rolling", "Canary"]
VERSION_RULE = Rule(
    "must be a version: letters, digits, '.', '_' and '-', starting with a letter or digit",
    require=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
)
ONE_TOKEN = (
    "extraTasks[].baseModel.tokenSecretRef must equal baseModel.tokenSecretRef: the serving pod has one "
    "HF_TOKEN"
)
NOT_BASE = Rule("must differ from 'base', the model id of the bare causal-lm base model", deny=r"^base$")


# Root-level CEL (only there can a rule read metadata.name); AdapterDeployment runs its pydantic twin.
EXTRA_NAME_RULE: dict[str, str] = {
    "rule": "!has(self.spec.extraTasks) || self.spec.extraTasks.all(t, t.name != self.metadata.name)",
    "message": "spec.extraTasks[].name must differ from metadata.name, the model id of the primary adapter",
}


class FineTuneJobRef(ApiModel):
    """A FineTuneJob in the same namespace."""

    name: Annotated[str, object_name("FineTuneJob name.")]


class AdapterSource(ApiModel):
    """Where the adapter comes from: exactly one of fineTuneJobRef and uri."""

    fine_tune_job_ref: Annotated[
        FineTuneJobRef | None,
        Field(
            description="Serve the adapter this FineTuneJob produced; a new successful run rolls out "
            "(only when not worse, with rollout.requireImprovement)."
        ),
    ] = None
    uri: AdapterUri | None = None
    version: Annotated[
        str | None, Checked("Pin (roll back to) a version listed in status.history.", 128, VERSION_RULE)
    ] = None

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.fineTuneJobRef) != has(self.uri)",
                    "message": "set exactly one of adapter.fineTuneJobRef and adapter.uri",
                },
            ]
        }
    }

    @model_validator(mode="after")
    def _one_source(self) -> AdapterSource:
        if (self.fine_tune_job_ref is None) == (self.uri is None):
            raise ValueError("set exactly one of adapter.fineTuneJobRef and adapter.uri")
        return self


class ServingResources(ApiModel):
    """Hardware and placement of the serving pods."""

    gpus: Annotated[int, Field(description="GPUs per serving pod (0: CPU).", ge=0, le=8)] = 0
    gpu_resource: GpuResource = "nvidia.com/gpu"
    cpu: CpuQuantity = None
    memory: MemoryQuantity = None
    node_selector: NodeSelector = {}
    tolerations: Annotated[
        list[Toleration], Field(description="Taints the pods tolerate.", max_length=64)
    ] = []
    priority_class_name: PriorityClassName = None


Precision = Literal["auto", "fp32", "bf16"]
Quantize = Literal["none", "int4"]


class ServingOptions(ApiModel):
    """How each server batches and bounds requests."""

    max_batch_size: Annotated[int, Field(description="Rows per forward pass.", ge=1, le=256)] = 8
    batch_wait_ms: Annotated[float, Field(description="Wait window for dynamic batching.", ge=0, le=1000)] = (
        10.0
    )
    max_input_tokens: Annotated[int, Field(description="Longer prompts get HTTP 400.", ge=1, le=32768)] = 512
    max_new_tokens: Annotated[int, Field(description="Upper bound for max_tokens.", ge=1, le=8192)] = 256
    max_queued: Annotated[
        int,
        Field(
            description="Inference requests one pod holds at once (waiting or computing); more get HTTP 429 "
            "with Retry-After, so admitted requests keep their latency under overload.",
            ge=1,
            le=100_000,
        ),
    ] = 64
    truncate: Annotated[
        bool,
        Field(
            description="sequence-classification: cut inputs to maxInputTokens (as training cuts to "
            "maxSeqLength); false: a longer input gets its own error in the batch."
        ),
    ] = True
    port: Annotated[int, Field(description="Container port of the HTTP server.", ge=1024, le=65535)] = 8000
    precision: Annotated[
        Precision,
        Field(
            description="Weights dtype: auto = bf16 on CUDA and on CPUs with native bf16 (AVX-512 BF16 / "
            "AMX), else fp32, except causal-lm on CPUs: fp32 (bf16 biased the triage model's answers); "
            "fp32 and bf16 force one."
        ),
    ] = "auto"
    quantize: Annotated[
        Quantize,
        Field(
            description="int4: weight-only 4-bit linear layers on CPU serving pods (1/8 of fp32's bytes per "
            "token; lossless for a base dequantized from a Q4_1 GGUF, lossy for others: the pod logs the "
            "error); none: weights in `precision`."
        ),
    ] = "none"
    merge_single_adapter: Annotated[
        bool,
        Field(
            description="Fold the served adapter's LoRA into the base weights while every request in a "
            "batch is for it (a pod serves one adapter, so nearly always): base-model speed per token. A "
            "request for the base model unfolds it first; false keeps LoRA unmerged."
        ),
    ] = True


class RolloutStep(ApiModel):
    """One canary step: send `weight` percent of the pods to the new adapter, then wait."""

    weight: Annotated[int, Field(description="Percent of serving pods on the new adapter.", ge=1, le=100)]
    pause_seconds: Annotated[int, Field(description="How long to watch this step.", ge=0, le=86400)] = 300


MAX_CANARY_STEPS = 10
INCREASING_WEIGHTS = (
    "rollout.steps weights must increase strictly from step to step (e.g. 10, 50, 100): a step that "
    "goes back or repeats exposes more pods first and watches fewer later"
)
# CEL has no indexed loop over a list; the steps are few, so each neighbouring pair is spelled out.
_INCREASING_WEIGHTS = " && ".join(
    f"(size(self.steps) <= {i} || self.steps[{i}].weight > self.steps[{i - 1}].weight)"
    for i in range(1, MAX_CANARY_STEPS)
)


class RolloutSpec(ApiModel):
    """How a new adapter version replaces the active one."""

    strategy: Annotated[
        RolloutStrategy, Field(description="Rolling (surge one pod at a time) or Canary.")
    ] = "Rolling"
    steps: Annotated[
        list[RolloutStep],
        Field(description="Canary steps, strictly increasing weights.", max_length=MAX_CANARY_STEPS),
    ] = []
    require_improvement: Annotated[
        bool,
        Field(
            description="A new successful run of adapter.fineTuneJobRef rolls out only when its gate metric "
            "is not worse (>=) than the serving version's; a worse one is recorded in status.history as "
            "Skipped (event RolloutSkipped) and can still be pinned with adapter.version."
        ),
    ] = False

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "self.strategy == 'Canary' || size(self.steps) == 0",
                    "message": "rollout.steps apply only to strategy Canary",
                },
                {
                    "rule": "self.strategy != 'Canary' || size(self.steps) > 0",
                    "message": "rollout strategy Canary needs at least one step",
                },
                {"rule": _INCREASING_WEIGHTS, "message": INCREASING_WEIGHTS},
            ]
        }
    }

    @model_validator(mode="after")
    def _steps_match_strategy(self) -> RolloutSpec:
        if self.strategy == "Canary" and not self.steps:
            raise ValueError("rollout strategy Canary needs at least one step")
        if self.strategy != "Canary" and self.steps:
            raise ValueError("rollout.steps apply only to strategy Canary")
        weights = [step.weight for step in self.steps]
        if any(later <= earlier for earlier, later in pairwise(weights)):
            raise ValueError(f"{INCREASING_WEIGHTS} (got {weights})")
        return self


class GateSpec(ApiModel):
    """How a retrain is judged against the champion: both adapters answer the same held-out rows (the
    recipe's validation rows plus every fresh hold-out row so far); the verdict reads a 95% Newcombe
    interval of the paired difference in rows answered right, and waits below ``minRows``."""

    min_rows: Annotated[
        int,
        Field(
            description="Held-out rows both adapters must have answered before the gate decides; with "
            "fewer the retrain is WaitingForLabels (label more on the review queue). One row of 10 moves "
            "a score 10 points, so fewer than 10 is refused.",
            ge=10,
            le=1_000_000,
        ),
    ] = 50


class RetrainingSpec(ApiModel):
    """Self-healing: retrain on original + fresh data when a trigger fires, promote only a better adapter."""

    enabled: Annotated[bool, Field(description="Create retraining FineTuneJobs on sustained breaches.")] = (
        False
    )
    approval: Annotated[
        Literal["auto", "manual"],
        Field(description="manual: the retraining FineTuneJob is created suspended; resume it to train."),
    ] = "auto"
    cooldown_seconds: Annotated[
        int, Field(description="Quiet time after a retrain starts.", ge=0, le=30 * 86400)
    ] = 3600
    max_per_day: Annotated[int, Field(description="Retrains started per rolling 24 h.", ge=0, le=100)] = 3
    min_improvement: Annotated[
        float,
        Field(
            description="Promote only when the lower bound of the 95% interval of (challenger - champion) "
            "share of held-out rows answered right is above this (0: better than the champion beyond "
            "chance); reject when the upper bound is below it; otherwise Inconclusive.",
            ge=0,
            le=1,
        ),
    ] = 0.0
    gate: Annotated[GateSpec, Field(description="The evidence the champion/challenger verdict needs.")] = (
        GateSpec()
    )
    fresh_data_weight: Annotated[
        int, Field(description="Oversampling of fresh labelled rows.", ge=1, le=10)
    ] = 2
    template: Annotated[
        FineTuneJobSpec | None,
        Field(
            description="The retraining recipe; default: the spec of adapter.fineTuneJobRef. Fresh data is "
            "added as dataset.extra and the fresh hold-out as dataset.validationExtra (scored beside the "
            "recipe's own validation rows); evaluation.minAccuracy is then dropped (it was set for the "
            "recipe's own validation rows) and the gate is the champion scored on the same rows."
        ),
    ] = None

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    # the defaults are spelled out: CEL sees only what the user wrote in template
                    "rule": "!has(self.template) || (has(self.template.evaluation) && "
                    "has(self.template.evaluation.maxSamples) ? self.template.evaluation.maxSamples : "
                    f"{EvaluationSpec.model_fields['max_samples'].default}) >= "
                    "(has(self.gate) && has(self.gate.minRows) ? self.gate.minRows : "
                    f"{GateSpec.model_fields['min_rows'].default})",
                    "message": "retraining.gate.minRows must not exceed the template's "
                    "evaluation.maxSamples: the gate could never decide",
                }
            ]
        }
    }

    @model_validator(mode="after")
    def _gate_can_decide(self) -> RetrainingSpec:
        if self.template is not None and self.template.evaluation.max_samples < self.gate.min_rows:
            raise ValueError(
                f"retraining.gate.minRows {self.gate.min_rows} is above the template's "
                f"evaluation.maxSamples {self.template.evaluation.max_samples}: the gate could never decide; "
                "lower minRows or raise maxSamples"
            )
        return self


class ExtraTask(ApiModel):
    """Another task served by the same pods behind the same URL, on its own base model (e.g. a chat
    model beside a classifier). Rollout strategy, canary, monitoring and retraining apply to the
    primary adapter only; an extra task's new adapter goes out as a rolling update of all pods."""

    name: Annotated[
        str,
        Checked(
            "Model id clients send for this task's adapter (the primary adapter's id is metadata.name).",
            63,
            LABEL_RULE,
            NOT_BASE,
        ),
    ]
    base_model: Annotated[BaseModelSpec, Field(description="The base model of this task, loaded once.")]
    task: Annotated[
        TaskType, Field(description="causal-lm or sequence-classification; must differ from spec.task.")
    ]
    adapter: Annotated[
        AdapterSource,
        Field(description="The adapter to serve (fineTuneJobRef or uri; version pins are not supported)."),
    ]
    max_input_tokens: Annotated[
        int | None,
        Field(
            description="Longest input of this task in tokens; default: serving.maxInputTokens.",
            ge=1,
            le=32768,
        ),
    ] = None
    max_new_tokens: Annotated[
        int | None,
        Field(
            description="causal-lm: upper bound for max_tokens; default: serving.maxNewTokens.", ge=1, le=8192
        ),
    ] = None

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.adapter.version)",
                    "message": "extraTasks[].adapter.version is not supported (extra tasks keep no history): "
                    "point adapter.fineTuneJobRef or adapter.uri at the adapter to serve",
                },
                {
                    "rule": "!has(self.maxNewTokens) || self.task == 'causal-lm'",
                    "message": "extraTasks[].maxNewTokens applies only to task causal-lm",
                },
            ]
        }
    }

    @model_validator(mode="after")
    def _fits_its_task(self) -> ExtraTask:
        if self.adapter.version is not None:
            raise ValueError(
                "extraTasks[].adapter.version is not supported (extra tasks keep no history): "
                "point adapter.fineTuneJobRef or adapter.uri at the adapter to serve"
            )
        if self.max_new_tokens is not None and self.task != "causal-lm":
            raise ValueError("extraTasks[].maxNewTokens applies only to task causal-lm")
        return self


KEDA_NEEDS_PROMETHEUS = (
    "autoscaling.keda needs monitoring.prometheusUrl: KEDA's Prometheus trigger reads the queue metric there"
)


INT4_ON_CPU = (
    "serving.quantize int4 runs on CPU serving pods only (torch's CPU int4 kernel): set resources.gpus 0 "
    "or quantize none"
)
RETRAIN_NEEDS_PROMETHEUS = (
    "retraining.enabled needs monitoring.prometheusUrl (triggers are read from Prometheus)"
)
RETRAIN_NEEDS_RECIPE = "retraining.enabled needs retraining.template or adapter.fineTuneJobRef"
RETRAIN_BUDGET = (
    "retraining.maxPerDay must be at least 1 when retraining.enabled: with 0 no retrain can ever start"
)
RETRAIN_OVER_SERVED = (
    "retraining.template.output.uri must not equal or lie inside adapter.uri: a retrain would write "
    "into the served adapter's folder"
)


class AdapterDeploymentSpec(ApiModel):
    """Desired state of an AdapterDeployment."""

    base_model: Annotated[BaseModelSpec, Field(description="The base model the server loads once.")]
    task: Annotated[
        TaskType | None,
        Field(
            description="causal-lm or sequence-classification; taken from the FineTuneJob when omitted "
            "(required with adapter.uri)."
        ),
    ] = None
    adapter: Annotated[AdapterSource, Field(description="The adapter to serve.")]
    replicas: Annotated[
        int,
        Field(
            description="Serving pods on the stable track; with autoscaling the autoscaler sets it through "
            "the scale subresource (leave it out of GitOps manifests then).",
            ge=0,
            le=1000,
        ),
    ] = 1
    autoscaling: Annotated[
        AutoscalingSpec | None,
        Field(description="Scale the serving pods on their request queue (HPA, or KEDA)."),
    ] = None
    resources: Annotated[ServingResources, Field(description="Hardware and placement.")] = ServingResources()
    serving: Annotated[ServingOptions, Field(description="Batching and limits.")] = ServingOptions()
    runtime: Annotated[
        RuntimeSpec, Field(description="The serving engine: kubetune's server, or vLLM fronted by kubetune.")
    ] = RuntimeSpec()
    rollout: Annotated[RolloutSpec, Field(description="How new adapter versions go out.")] = RolloutSpec()
    admin_token_secret_ref: Annotated[
        SecretKeyRef | None,
        Field(description="Secret key with the bearer token for /admin/adapters (disabled when unset)."),
    ] = None
    monitoring: Annotated[MonitoringSpec, Field(description="Drift and accuracy monitoring.")] = (
        MonitoringSpec()
    )
    retraining: Annotated[RetrainingSpec, Field(description="Automatic retraining and promotion.")] = (
        RetrainingSpec()
    )
    extra_tasks: Annotated[
        list[ExtraTask],
        Field(
            description="More tasks served by the same pods behind the same Service URL, each on its own "
            "base model with its own adapter (one task of each kind per server). Canary, monitoring and "
            "retraining apply to the primary adapter only.",
            max_length=EXTRA_TASKS_LIMIT,
        ),
    ] = []

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "self.serving.quantize != 'int4' || self.resources.gpus == 0",
                    "message": INT4_ON_CPU,
                },
                {
                    "rule": "!self.retraining.enabled || has(self.monitoring.prometheusUrl)",
                    "message": RETRAIN_NEEDS_PROMETHEUS,
                },
                {
                    "rule": "!self.retraining.enabled || has(self.retraining.template) || "
                    "has(self.adapter.fineTuneJobRef)",
                    "message": RETRAIN_NEEDS_RECIPE,
                },
                {
                    "rule": "!self.retraining.enabled || self.retraining.maxPerDay > 0",
                    "message": RETRAIN_BUDGET,
                },
                {
                    "rule": "!has(self.retraining.template) || !has(self.adapter.uri) || "
                    f"!{writes_into_cel('self.retraining.template.output.uri', 'self.adapter.uri')}",
                    "message": RETRAIN_OVER_SERVED,
                },
                {
                    "rule": "has(self.task) || !has(self.adapter.uri)",
                    "message": "task is required when adapter.uri is set",
                },
                {
                    "rule": "has(self.task) || !has(self.extraTasks) || size(self.extraTasks) == 0",
                    "message": "task is required when extraTasks is set",
                },
                {
                    "rule": "!has(self.task) || !has(self.extraTasks) || "
                    "self.extraTasks.all(t, t.task != self.task)",
                    "message": "extraTasks[].task must differ from task: one task of each kind per server",
                },
                {
                    "rule": "!has(self.extraTasks) || !has(self.baseModel.tokenSecretRef) || "
                    "self.extraTasks.all(t, !has(t.baseModel.tokenSecretRef) || "
                    "(t.baseModel.tokenSecretRef.name == self.baseModel.tokenSecretRef.name && "
                    "t.baseModel.tokenSecretRef.key == self.baseModel.tokenSecretRef.key))",
                    "message": ONE_TOKEN,
                },
                {
                    "rule": "!has(self.autoscaling) || !self.autoscaling.keda || "
                    "has(self.monitoring.prometheusUrl)",
                    "message": KEDA_NEEDS_PROMETHEUS,
                },
                {
                    "rule": f"!({IS_VLLM}) || !has(self.task) || self.task != 'sequence-classification'",
                    "message": VLLM_NO_CLASSIFIER,
                },
                {"rule": f"!({IS_VLLM}) || self.serving.quantize != 'int4'", "message": VLLM_NO_INT4},
                {"rule": f"!({IS_VLLM}) || self.resources.gpus > 0", "message": VLLM_NEEDS_GPU},
                {
                    "rule": f"!({IS_VLLM}) || "
                    "(!self.baseModel.name.startsWith('pkg://') && !has(self.baseModel.ggufFile))",
                    "message": VLLM_BASE,
                },
                {
                    "rule": f"!({IS_VLLM}) || !has(self.extraTasks) || size(self.extraTasks) == 0",
                    "message": VLLM_NO_EXTRA_TASKS,
                },
            ]
        }
    }

    @model_validator(mode="after")
    def _task_for_uri(self) -> AdapterDeploymentSpec:
        if self.task is None and self.adapter.uri is not None:
            raise ValueError("task is required when adapter.uri is set")
        if self.serving.quantize == "int4" and self.resources.gpus > 0:
            raise ValueError(INT4_ON_CPU)
        retraining = self.retraining
        if retraining.enabled and self.monitoring.prometheus_url is None:
            raise ValueError(RETRAIN_NEEDS_PROMETHEUS)
        if retraining.enabled and retraining.template is None and self.adapter.fine_tune_job_ref is None:
            raise ValueError(RETRAIN_NEEDS_RECIPE)
        if retraining.enabled and retraining.max_per_day == 0:
            raise ValueError(RETRAIN_BUDGET)
        template, served = retraining.template, self.adapter.uri
        if template is not None and served is not None and writes_into(template.output.uri, served):
            raise ValueError(RETRAIN_OVER_SERVED)
        self._extra_tasks_apart()
        if self.autoscaling is not None and self.autoscaling.keda and self.monitoring.prometheus_url is None:
            raise ValueError(KEDA_NEEDS_PROMETHEUS)
        self._vllm_can_serve()
        return self

    def _vllm_can_serve(self) -> None:
        if self.runtime.engine != "vllm":
            return
        if self.task == "sequence-classification":
            raise ValueError(VLLM_NO_CLASSIFIER)
        if self.serving.quantize == "int4":
            raise ValueError(VLLM_NO_INT4)
        if self.resources.gpus == 0:
            raise ValueError(VLLM_NEEDS_GPU)
        if self.extra_tasks:
            raise ValueError(VLLM_NO_EXTRA_TASKS)
        if self.base_model.name.startswith("pkg://") or self.base_model.gguf_file:
            raise ValueError(VLLM_BASE)

    def _extra_tasks_apart(self) -> None:
        if self.extra_tasks and self.task is None:
            raise ValueError("task is required when extraTasks is set")
        if any(extra.task == self.task for extra in self.extra_tasks):
            raise ValueError("extraTasks[].task must differ from task: one task of each kind per server")
        token = self.base_model.token_secret_ref
        if token is not None and any(
            extra.base_model.token_secret_ref not in (None, token) for extra in self.extra_tasks
        ):
            raise ValueError(ONE_TOKEN)


class AdapterDeployment(ApiModel):
    """The whole custom resource as the operator reads it."""

    model_config = {"extra": "ignore"}

    api_version: str = "kubetune.dev/v1alpha1"
    kind: Literal["AdapterDeployment"] = "AdapterDeployment"
    metadata: ObjectMeta = ObjectMeta()
    spec: AdapterDeploymentSpec
    status: AdapterDeploymentStatus = AdapterDeploymentStatus()

    @model_validator(mode="after")
    def _name_fits_children(self) -> AdapterDeployment:
        check_resource_name(self.metadata.name)
        if any(extra.name == self.metadata.name for extra in self.spec.extra_tasks):
            raise ValueError(EXTRA_NAME_RULE["message"])
        return self
