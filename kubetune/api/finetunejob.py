"""FineTuneJob: a pretrained base model + a domain dataset + LoRA settings -> an evaluated adapter."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from kubetune.api.common import (
    LABEL_RULE,
    ApiModel,
    ChampionUri,
    Condition,
    DataUri,
    ModelName,
    ObjectMeta,
    OutputUri,
    SecretKeyRef,
    SecretRef,
    check_resource_name,
)
from kubetune.api.rules import Checked, Rule, single_line
from kubetune.api.scheduling import (
    ONE_YEAR,
    CpuQuantity,
    GpuResource,
    MemoryQuantity,
    NodeSelector,
    PriorityClassName,
    Toleration,
)
from kubetune.api.uris import TRAVERSAL, writes_into, writes_into_cel

TaskType = Literal["causal-lm", "sequence-classification"]
CausalFormat = Literal["prompt-completion", "messages"]
DataFormat = Literal["jsonl", "csv", "parquet"]
Phase = Literal["Pending", "ValidatingData", "Running", "Succeeded", "Failed", "Cancelled", "Suspended"]
TERMINAL_PHASES: frozenset[str] = frozenset({"Succeeded", "Failed", "Cancelled"})
EvalMetric = Literal["accuracy", "macro_f1", "intent_exact_match", "json_validity"]
Precision = Literal["auto", "bf16", "fp16", "fp32"]
Quantization = Literal["none", "4bit"]
Recipe = Literal["auto", "lora", "full", "probe", "heads"]

INT32_MAX = 2**31 - 1
REVISION = Rule(
    "must be a Hub revision: a branch, tag or commit of letters, digits, '.', '_', '-' and '/'",
    require=r"^[A-Za-z0-9._/-]+$",
)
GGUF_FILE = Rule(
    "must be a file name ending in .gguf (letters, digits, '.', '_' and '-'; no folders)",
    require=r"^[A-Za-z0-9._-]+[.]gguf$",
)
TARGET_MODULE = Rule(
    "must be a module name or glob: letters, digits, '_', '.', '*' and '-'", require=r"^[A-Za-z0-9_.*-]+$"
)
Column = Annotated[str, Checked("A column name in the dataset.", 128, single_line(), min_length=1)]


class BaseModelSpec(ApiModel):
    """The pretrained model to adapt."""

    name: ModelName
    revision: Annotated[
        str | None,
        Checked("Hub revision (branch, tag or commit) for a Hugging Face id.", 128, REVISION, TRAVERSAL),
    ] = None
    gguf_file: Annotated[
        str | None,
        Checked(
            "GGUF file inside the model location; dequantized once and cached as safetensors.", 255, GGUF_FILE
        ),
    ] = None
    token_secret_ref: Annotated[
        SecretKeyRef | None,
        Field(description="Secret key holding a Hugging Face token (exposed to the trainer as HF_TOKEN)."),
    ] = None


class TaskSpec(ApiModel):
    """What the adapter learns."""

    type: Annotated[TaskType, Field(description="causal-lm (SFT) or sequence-classification.")]
    format: Annotated[
        CausalFormat | None,
        Field(description="causal-lm only: prompt-completion pairs or chat messages (default messages)."),
    ] = None
    labels: Annotated[
        list[Annotated[str, Checked("A label name.", 128, single_line(), min_length=1)]] | None,
        Field(
            description="sequence-classification only: the label set, in order, no repeats. Inferred "
            "from the training data when omitted.",
            min_length=2,
            max_length=1000,
            # the API server refuses a repeated label itself ("Duplicate value")
            json_schema_extra={"x-kubernetes-list-type": "set"},
        ),
    ] = None

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.format) || self.type == 'causal-lm'",
                    "message": "task.format applies only to type causal-lm",
                },
                {
                    "rule": "!has(self.labels) || self.type == 'sequence-classification'",
                    "message": "task.labels applies only to type sequence-classification",
                },
            ]
        }
    }

    @model_validator(mode="after")
    def _fields_match_type(self) -> TaskSpec:
        if self.format is not None and self.type != "causal-lm":
            raise ValueError("task.format applies only to type causal-lm")
        if self.labels is not None and self.type != "sequence-classification":
            raise ValueError("task.labels applies only to type sequence-classification")
        if self.labels is not None and len(set(self.labels)) != len(self.labels):
            raise ValueError("task.labels must not repeat a label")
        return self

    @property
    def causal_format(self) -> CausalFormat:
        return self.format or "messages"


class DataSource(ApiModel):
    """One dataset file."""

    uri: DataUri
    secret_ref: Annotated[
        SecretRef | None,
        Field(
            description="Secret whose keys become env vars for this source (s3: AWS_ACCESS_KEY_ID, "
            "AWS_SECRET_ACCESS_KEY, optional AWS_ENDPOINT_URL; https: KUBETUNE_HTTP_BEARER_TOKEN)."
        ),
    ] = None


class FieldMapping(ApiModel):
    """Column names in the dataset, when they differ from the defaults."""

    text: Annotated[Column, Field(description="Input text column (classification).")] = "text"
    label: Annotated[Column, Field(description="Label column (classification).")] = "label"
    prompt: Annotated[Column, Field(description="Prompt column (prompt-completion).")] = "prompt"
    completion: Annotated[Column, Field(description="Completion column (prompt-completion).")] = "completion"
    messages: Annotated[Column, Field(description="Chat messages column (messages).")] = "messages"


class ExtraSource(DataSource):
    """More training rows (e.g. fresh production feedback), repeated ``weight`` times."""

    weight: Annotated[
        int,
        Field(description="Oversampling factor: each row is used this many times per epoch.", ge=1, le=10),
    ] = 1


class DatasetSpec(ApiModel):
    """Training data and its validation split."""

    train: Annotated[DataSource, Field(description="Training data.")]
    extra: Annotated[
        list[ExtraSource],
        Field(
            description="Additional training sources merged into train (same format and fields), e.g. "
            "the fresh labelled traffic a retrain adds.",
            max_length=8,
        ),
    ] = []
    validation: Annotated[
        DataSource | None,
        Field(description="Held-out validation data. When omitted, validationSplit of train is held out."),
    ] = None
    validation_extra: Annotated[
        list[DataSource],
        Field(
            description="More held-out rows scored together with the validation rows, never trained on "
            "(same format and fields), e.g. the fresh hold-out a retrain adds.",
            max_length=8,
        ),
    ] = []
    validation_split: Annotated[
        float,
        Field(description="Fraction of train held out when no validation source is given.", gt=0.0, le=0.5),
    ] = 0.1
    format: Annotated[
        DataFormat | None,
        Field(description="File format; inferred from the file extension when omitted."),
    ] = None
    fields: Annotated[FieldMapping, Field(description="Column names.")] = FieldMapping()

    @property
    def sources(self) -> list[DataSource]:
        """Every dataset location: train, extra, validation, validationExtra."""
        validation = [self.validation] if self.validation is not None else []
        return [self.train, *self.extra, *validation, *self.validation_extra]


class LoraSpec(ApiModel):
    """LoRA adapter settings (peft)."""

    r: Annotated[int, Field(description="LoRA rank.", ge=1, le=512)] = 16
    alpha: Annotated[int, Field(description="LoRA scaling alpha.", ge=1, le=4096)] = 32
    dropout: Annotated[float, Field(description="Dropout on the LoRA path.", ge=0.0, lt=1.0)] = 0.05
    target_modules: Annotated[
        list[Annotated[str, Checked("A module name or glob.", 128, TARGET_MODULE, min_length=1)]],
        Field(
            description="Module names to adapt, or [auto] for every linear layer of the architecture.",
            min_length=1,
            max_length=64,
            json_schema_extra={
                "x-kubernetes-validations": [
                    {
                        "rule": "!('auto' in self) || size(self) == 1",
                        "message": "targetModules: 'auto' must be the only entry",
                    }
                ]
            },
        ),
    ] = ["auto"]
    quantization: Annotated[
        Quantization,
        Field(description="4bit loads the frozen base in 4-bit (QLoRA, bitsandbytes); needs a GPU."),
    ] = "none"

    @model_validator(mode="after")
    def _auto_alone(self) -> LoraSpec:
        if "auto" in self.target_modules and len(self.target_modules) != 1:
            raise ValueError("targetModules: 'auto' must be the only entry")
        return self


class TrainingSpec(ApiModel):
    """Optimisation settings. Exactly one of epochs and maxSteps."""

    epochs: Annotated[float | None, Field(description="Passes over the training data.", gt=0, le=1000)] = None
    max_steps: Annotated[int | None, Field(description="Optimizer steps to run.", ge=1, le=10_000_000)] = None
    learning_rate: Annotated[float, Field(description="Peak learning rate.", gt=0, le=1)] = 2e-4
    batch_size: Annotated[int, Field(description="Sequences per device per micro-batch.", ge=1, le=4096)] = 16
    gradient_accumulation: Annotated[
        int, Field(description="Micro-batches per optimizer step.", ge=1, le=1024)
    ] = 1
    max_seq_length: Annotated[
        int, Field(description="Tokens per sequence (truncation).", ge=8, le=131072)
    ] = 512
    packing: Annotated[
        bool, Field(description="Padding-free sequence packing (causal-lm), no cross-sequence attention.")
    ] = False
    warmup_ratio: Annotated[float, Field(description="Fraction of steps of LR warm-up.", ge=0, le=0.5)] = 0.05
    weight_decay: Annotated[float, Field(description="AdamW weight decay.", ge=0, le=1)] = 0.0
    seed: Annotated[int, Field(description="Random seed (data order, init).", ge=0, le=INT32_MAX)] = 42
    checkpoint_every: Annotated[
        int,
        Field(description="Optimizer steps between checkpoints to the output location.", ge=1, le=10_000_000),
    ] = 100
    precision: Annotated[Precision, Field(description="auto = bf16 where supported, else fp32.")] = "auto"
    compile: Annotated[bool, Field(description="torch.compile the model.")] = False
    gradient_checkpointing: Annotated[bool, Field(description="Trade compute for activation memory.")] = False
    recipe: Annotated[
        Recipe,
        Field(
            description="lora (LP-FT LoRA), probe (logistic regression on frozen embeddings as the head), "
            "full (every encoder weight but the token embeddings), heads (causal-lm with closed-set "
            "answers: LoRA + one classification head per answer field, LP-FT), or auto: train each that "
            "fits (probe and full: sequence-classification only; full: small models; heads: closed-set "
            "causal-lm answers), keep the winner (causal-lm: on rows held out of train)."
        ),
    ] = "lora"

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.epochs) != has(self.maxSteps)",
                    "message": "set exactly one of training.epochs and training.maxSteps",
                },
            ]
        }
    }

    @model_validator(mode="after")
    def _one_budget(self) -> TrainingSpec:
        if (self.epochs is None) == (self.max_steps is None):
            raise ValueError("set exactly one of training.epochs and training.maxSteps")
        return self


class EvaluationSpec(ApiModel):
    """How the adapter is judged, and the gate it must pass."""

    metric: Annotated[
        EvalMetric | None,
        Field(
            description="Gate metric: accuracy/macro_f1 (classification), intent_exact_match/"
            "json_validity (causal-lm triage). Default: accuracy or intent_exact_match."
        ),
    ] = None
    min_accuracy: Annotated[
        float | None,
        Field(
            description="Fail the job when the gate metric ends below this value (0..1) on its validation "
            "rows. A retrain judged on fresh hold-out rows drops it and is gated against the champion.",
            ge=0,
            le=1,
        ),
    ] = None
    max_samples: Annotated[
        int,
        Field(
            description="Validation rows evaluated (generation is slow on causal LMs).", ge=1, le=1_000_000
        ),
    ] = 512
    baseline: Annotated[
        bool,
        Field(
            description="Also score a linear probe on frozen embeddings (classification; causal-lm whose "
            "answers take values from a closed set: one probe per answer field, on the base model's and "
            "the shipped MiniLM encoder's embeddings)."
        ),
    ] = True
    must_beat_baseline: Annotated[
        bool,
        Field(
            description="causal-lm with closed-set answers: fail the gate (GateFailed) when the adapter "
            "ends below the best linear-probe baseline on any answer field."
        ),
    ] = True
    champion_uri: ChampionUri | None = None


class ResourcesSpec(ApiModel):
    """Where and on what the training pods run."""

    gpus_per_node: Annotated[int, Field(description="GPUs per pod (node).", ge=0, le=16)] = 1
    nodes: Annotated[
        int, Field(description="Pods (nodes); > 1 uses an Indexed Job + torchrun.", ge=1, le=256)
    ] = 1
    gpu_resource: GpuResource = "nvidia.com/gpu"
    cpu: CpuQuantity = None
    memory: MemoryQuantity = None
    node_selector: NodeSelector = {}
    tolerations: Annotated[
        list[Toleration], Field(description="Taints the pods tolerate.", max_length=64)
    ] = []
    priority_class_name: PriorityClassName = None
    queue_name: Annotated[
        str | None,
        Checked(
            "Kueue LocalQueue; sets kueue.x-k8s.io/queue-name and lets Kueue admit the job.", 63, LABEL_RULE
        ),
    ] = None


class OutputSpec(ApiModel):
    """Where the adapter, checkpoints and metrics go."""

    uri: OutputUri
    secret_ref: Annotated[
        SecretRef | None, Field(description="Secret with s3 credentials (keys become env vars).")
    ] = None


FP16_NEEDS_GPU = "training.precision fp16 needs resources.gpusPerNode >= 1 (CPUs train in bf16 or fp32)"
ONE_SECRET = (
    "dataset and output secretRefs name different Secrets; their keys become the same environment "
    "variables (AWS_*), so use one Secret for all locations"
)
CLASSIFIER_RECIPE = (
    "training.recipe probe and full apply only to task.type sequence-classification (a causal-lm job "
    "trains lora)"
)
HEADS_RECIPE = "training.recipe heads applies only to task.type causal-lm (answers from a closed set)"
OUTPUT_OVER_DATA = (
    "output.uri must not equal or lie inside a dataset uri: the run would write over its own data"
)
OUTPUT_OVER_CHAMPION = (
    "output.uri must not equal or lie inside evaluation.championUri: the run would write into the "
    "served adapter's folder"
)


def _optional_ref(obj: str) -> str:
    return f"(has({obj}.secretRef) ? [{obj}.secretRef.name] : [])"


def _listed_refs(field: str) -> str:
    return f"(has({field}) ? {field}.filter(s, has(s.secretRef)).map(s, s.secretRef.name) : [])"


# Every secretRef name in the spec as one CEL list (the twin of DatasetSpec.sources + output).
_SECRET_NAMES = (
    "("
    + " + ".join(
        (
            _optional_ref("self.output"),
            _optional_ref("self.dataset.train"),
            "(has(self.dataset.validation) ? " + _optional_ref("self.dataset.validation") + " : [])",
            _listed_refs("self.dataset.extra"),
            _listed_refs("self.dataset.validationExtra"),
        )
    )
    + ")"
)
_OUTPUT_INTO_S = writes_into_cel("self.output.uri", "s.uri")
_OUTPUT_APART_FROM_DATA = " && ".join(
    (
        f"!{writes_into_cel('self.output.uri', 'self.dataset.train.uri')}",
        "(!has(self.dataset.validation) || "
        f"!{writes_into_cel('self.output.uri', 'self.dataset.validation.uri')})",
        *(
            f"(!has(self.dataset.{f}) || self.dataset.{f}.all(s, !{_OUTPUT_INTO_S}))"
            for f in ("extra", "validationExtra")
        ),
    )
)


class FineTuneJobSpec(ApiModel):
    """Desired state of a FineTuneJob."""

    base_model: Annotated[BaseModelSpec, Field(description="The pretrained model to adapt.")]
    task: Annotated[TaskSpec, Field(description="What the adapter learns.")]
    dataset: Annotated[DatasetSpec, Field(description="Training and validation data.")]
    lora: Annotated[LoraSpec, Field(description="LoRA settings.")] = LoraSpec()
    training: Annotated[TrainingSpec, Field(description="Optimisation settings.")]
    evaluation: Annotated[EvaluationSpec, Field(description="Evaluation and gate.")] = EvaluationSpec()
    resources: Annotated[ResourcesSpec, Field(description="Scheduling and hardware.")] = ResourcesSpec()
    output: Annotated[OutputSpec, Field(description="Where the adapter goes.")]
    suspend: Annotated[bool, Field(description="Pause: the training Job is suspended (pods removed).")] = (
        False
    )
    active_deadline_seconds: Annotated[
        int | None,
        Field(
            description="Fail the job after this many seconds of running (at most a year).", ge=1, le=ONE_YEAR
        ),
    ] = None
    backoff_limit: Annotated[
        int,
        Field(description="Pod failures tolerated (preemptions and evictions do not count).", ge=0, le=100),
    ] = 3
    max_preemptions: Annotated[
        int, Field(description="Preemptions/evictions tolerated before the job fails.", ge=0, le=1000)
    ] = 20

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "self.lora.quantization != '4bit' || self.resources.gpusPerNode > 0",
                    "message": "lora.quantization 4bit needs resources.gpusPerNode >= 1",
                },
                {
                    "rule": "self.training.precision != 'fp16' || self.resources.gpusPerNode > 0",
                    "message": FP16_NEEDS_GPU,
                },
                {
                    "rule": "self.resources.nodes == 1 || self.resources.gpusPerNode > 0",
                    "message": "multi-node training (resources.nodes > 1) needs resources.gpusPerNode >= 1",
                },
                {
                    "rule": "!has(self.training.packing) || !self.training.packing || "
                    "self.task.type == 'causal-lm'",
                    "message": "training.packing applies only to task.type causal-lm",
                },
                {
                    "rule": "!has(self.evaluation.metric) || (self.task.type == 'sequence-classification') "
                    "== (self.evaluation.metric in ['accuracy', 'macro_f1'])",
                    "message": "evaluation.metric must be accuracy or macro_f1 for sequence-classification, "
                    "intent_exact_match or json_validity for causal-lm",
                },
                {"rule": f"{_SECRET_NAMES}.all(n, n == {_SECRET_NAMES}[0])", "message": ONE_SECRET},
                {
                    "rule": "!(self.training.recipe in ['probe', 'full']) || "
                    "self.task.type == 'sequence-classification'",
                    "message": CLASSIFIER_RECIPE,
                },
                {
                    "rule": "self.training.recipe != 'heads' || self.task.type == 'causal-lm'",
                    "message": HEADS_RECIPE,
                },
                {"rule": _OUTPUT_APART_FROM_DATA, "message": OUTPUT_OVER_DATA},
                {
                    "rule": "!has(self.evaluation.championUri) || "
                    f"!{writes_into_cel('self.output.uri', 'self.evaluation.championUri')}",
                    "message": OUTPUT_OVER_CHAMPION,
                },
            ]
        }
    }

    @model_validator(mode="after")
    def _cross_field(self) -> FineTuneJobSpec:
        if self.lora.quantization == "4bit" and self.resources.gpus_per_node == 0:
            raise ValueError("lora.quantization 4bit needs resources.gpusPerNode >= 1")
        if self.training.precision == "fp16" and self.resources.gpus_per_node == 0:
            raise ValueError(FP16_NEEDS_GPU)
        if self.resources.nodes > 1 and self.resources.gpus_per_node == 0:
            raise ValueError("multi-node training (resources.nodes > 1) needs resources.gpusPerNode >= 1")
        if self.training.packing and self.task.type != "causal-lm":
            raise ValueError("training.packing applies only to task.type causal-lm")
        refs = [self.output.secret_ref, *(source.secret_ref for source in self.dataset.sources)]
        secrets = {ref.name for ref in refs if ref is not None}
        if len(secrets) > 1:
            raise ValueError(f"{ONE_SECRET} (found {', '.join(sorted(secrets))})")
        if self.training.recipe in ("probe", "full") and self.task.type != "sequence-classification":
            raise ValueError(CLASSIFIER_RECIPE)
        if self.training.recipe == "heads" and self.task.type != "causal-lm":
            raise ValueError(HEADS_RECIPE)
        if any(writes_into(self.output.uri, source.uri) for source in self.dataset.sources):
            raise ValueError(OUTPUT_OVER_DATA)
        champion = self.evaluation.champion_uri
        if champion is not None and writes_into(self.output.uri, champion):
            raise ValueError(OUTPUT_OVER_CHAMPION)
        metric = self.evaluation.metric
        if metric is not None and (self.task.type == "sequence-classification") != (
            metric in ("accuracy", "macro_f1")
        ):
            raise ValueError(
                "evaluation.metric must be accuracy or macro_f1 for sequence-classification, "
                "intent_exact_match or json_validity for causal-lm"
            )
        return self

    @property
    def gate_metric(self) -> EvalMetric:
        if self.evaluation.metric is not None:
            return self.evaluation.metric
        return "accuracy" if self.task.type == "sequence-classification" else "intent_exact_match"


class CheckpointInfo(ApiModel):
    """The newest complete checkpoint the trainer reported."""

    step: Annotated[int, Field(description="Optimizer step of the checkpoint.", ge=0)]
    time: Annotated[
        str | None, Field(description="When it was written.", json_schema_extra={"format": "date-time"})
    ] = None


class PairedCounts(ApiModel):
    """How the new adapter and the champion fared on the same validation rows, row by row: the 2x2
    table a paired comparison (the operator's retrain gate) needs."""

    metric: Annotated[
        Literal["accuracy", "intent_exact_match"],
        Field(description="What counts as a row answered right."),
    ]
    both: Annotated[int, Field(description="Rows both answered right.", ge=0)]
    challenger_only: Annotated[int, Field(description="Rows only the new adapter answered right.", ge=0)]
    champion_only: Annotated[int, Field(description="Rows only the champion answered right.", ge=0)]
    neither: Annotated[int, Field(description="Rows both answered wrong.", ge=0)]

    @property
    def rows(self) -> int:
        return self.both + self.challenger_only + self.champion_only + self.neither


class TrainResult(ApiModel):
    """What the trainer reported on exit (pod termination message)."""

    adapter_uri: Annotated[str | None, Field(description="Where the adapter was written.")] = None
    digest: Annotated[
        str | None, Field(description="sha256 of the adapter weights.", pattern=r"^sha256:[0-9a-f]{64}$")
    ] = None
    dataset_digest: Annotated[str | None, Field(description="sha256 of the training data.")] = None
    metrics: Annotated[
        dict[str, float], Field(description="Final metrics (before_* and after_* values, baseline_*).")
    ] = {}
    validation_rows: Annotated[
        int | None,
        Field(description="Validation rows the after_* and champion_* metrics were computed on.", ge=0),
    ] = None
    paired: Annotated[
        PairedCounts | None,
        Field(description="Row-by-row agreement of the new adapter and the champion (when one was scored)."),
    ] = None
    reason: Annotated[
        str | None, Field(description="Why the trainer failed, when it did.", max_length=4096)
    ] = None


class FineTuneJobStatus(ApiModel):
    """Observed state of a FineTuneJob, written only by the operator."""

    phase: Annotated[Phase | None, Field(description="Lifecycle phase.")] = None
    message: Annotated[str | None, Field(description="One-line summary of the current phase.")] = None
    observed_generation: Annotated[int | None, Field(description="Generation last acted on.", ge=0)] = None
    conditions: Annotated[
        list[Condition],
        Field(
            description="Ready, SpecValid, DataValidated, PodsHealthy (False with the stuck pod's own "
            "reason, e.g. Unschedulable, ImagePullBackOff, CreateContainerConfigError), Running, "
            "Suspended, Succeeded, Failed."
        ),
    ] = []
    job_name: Annotated[str | None, Field(description="The batch/v1 Job that trains.")] = None
    start_time: Annotated[
        str | None,
        Field(description="When training first started.", json_schema_extra={"format": "date-time"}),
    ] = None
    completion_time: Annotated[
        str | None, Field(description="When the job finished.", json_schema_extra={"format": "date-time"})
    ] = None
    attempts: Annotated[int, Field(description="Pods started so far.", ge=0)] = 0
    failures: Annotated[int, Field(description="Pod failures counted against backoffLimit.", ge=0)] = 0
    preemptions: Annotated[
        int, Field(description="Pods lost to preemption/eviction (not failures).", ge=0)
    ] = 0
    preemptions_before_job: Annotated[
        int,
        Field(
            description="Preemptions of this run before its current training Job: a deleted training "
            "Job counts as one and is created again, up to spec.maxPreemptions.",
            ge=0,
        ),
    ] = 0
    progress: Annotated[str | None, Field(description="step/total, for printer columns.")] = None
    loss: Annotated[
        float | None,
        Field(
            description="Training loss to 4 significant digits: the latest streamed step while "
            "training, the trainer's final loss (result.metrics.train_loss) once finished."
        ),
    ] = None
    accuracy: Annotated[
        float | None,
        Field(
            description="Gate metric after training, to 4 significant digits (full value in result.metrics)."
        ),
    ] = None
    last_checkpoint: Annotated[CheckpointInfo | None, Field(description="Newest complete checkpoint.")] = None
    result: Annotated[TrainResult | None, Field(description="The trainer's final report.")] = None


class FineTuneJob(ApiModel):
    """The whole custom resource as the operator reads it."""

    model_config = {"extra": "ignore"}

    api_version: str = "kubetune.dev/v1alpha1"
    kind: Literal["FineTuneJob"] = "FineTuneJob"
    metadata: ObjectMeta = ObjectMeta()
    spec: FineTuneJobSpec
    status: FineTuneJobStatus = FineTuneJobStatus()

    @model_validator(mode="after")
    def _name_fits_children(self) -> FineTuneJob:
        check_resource_name(self.metadata.name)
        return self
