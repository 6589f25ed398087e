"""ServeConfig: what one server pod loads and how it batches; read from serve-config.yaml."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import Field, SecretStr, ValidationError, model_validator

from kubetune.api.adapterdeployment import Precision, Quantize
from kubetune.api.common import DNS1123_LABEL, ApiModel
from kubetune.api.finetunejob import BaseModelSpec
from kubetune.api.loading import ConfigError, format_validation_error
from kubetune.api.monitoring import ReviewSpec

ADMIN_TOKEN_ENV = "KUBETUNE_ADMIN_TOKEN"
ENGINE_API_KEY_ENV = "KUBETUNE_ENGINE_API_KEY"
ServeTask = Literal["causal-lm", "sequence-classification"]
Version = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
Digest = Annotated[
    str,
    Field(
        description="The adapter's digest (the trainer's TrainResult.digest: sha256 over every file a "
        "server reads from the folder, heads included): the adapter is refused unless the folder at `uri` "
        "has exactly this digest.",
        pattern=r"^sha256:[0-9a-f]{64}$",
    ),
]


class AdapterSpec(ApiModel):
    """One LoRA adapter to serve, addressed by clients as `name` (newest version) or `name@version`."""

    name: Annotated[str, Field(description="Model id clients send.", max_length=63, pattern=DNS1123_LABEL)]
    version: Annotated[
        Version, Field(description="Adapter version (e.g. FineTuneJob name or digest prefix).")
    ]
    uri: Annotated[
        str,
        Field(
            description="Adapter folder (peft): an absolute path, file://, pvc://<claim>/<path> or "
            "s3://<bucket>/<prefix>; a trainer output folder with an adapter/ subfolder also works.",
            min_length=1,
            max_length=2048,
        ),
    ]
    digest: Digest | None = None


def _admin_token_from_env() -> SecretStr | None:
    token = os.environ.get(ADMIN_TOKEN_ENV, "")
    return SecretStr(token) if token else None


def _engine_key_from_env() -> SecretStr | None:
    key = os.environ.get(ENGINE_API_KEY_ENV, "")
    return SecretStr(key) if key else None


class EngineSpec(ApiModel):
    """An OpenAI-compatible engine (vLLM, or another kubetune server) that this server fronts: it
    loads no model, forwards completions and chat there and keeps the engine's LoRA set equal to
    `adapters` through the engine's /v1/load_lora_adapter and /v1/unload_lora_adapter."""

    url: Annotated[
        str,
        Field(
            description="Base URL of the engine, e.g. http://127.0.0.1:8001 (its loopback port in the pod).",
            pattern=r"^https?://[^\s/]+(/[^\s]*)?$",
            max_length=2048,
        ),
    ]
    sync_interval_s: Annotated[
        float,
        Field(
            description="How often the engine's loaded adapters are compared with the desired set (and "
            "the ServeConfig file re-read): a restarted engine gets its adapters back within it.",
            gt=0,
            le=300,
        ),
    ] = 2.0
    timeout_s: Annotated[
        float, Field(description="Longest an engine request (a whole generation) may take.", gt=0, le=3600)
    ] = 600.0
    config_file: Annotated[
        str | None,
        Field(description="The ServeConfig file re-read for adapter changes (set by `kubetune serve -f`)."),
    ] = None
    api_key: Annotated[
        SecretStr | None,
        Field(
            description=f"Bearer token the engine wants (env {ENGINE_API_KEY_ENV}, from a Secret).",
            exclude=True,
        ),
    ] = Field(default_factory=_engine_key_from_env)


class ServeMonitoring(ApiModel):
    """In-process drift and accuracy monitoring, and the fresh-data sample kept for retraining."""

    enabled: Annotated[bool, Field(description="Compute drift scores inline (cheap) and export them.")] = True
    window_size: Annotated[
        int, Field(description="Recent inputs per adapter version in the drift window.", ge=50, le=100_000)
    ] = 500
    fresh_data_uri: Annotated[
        str | None,
        Field(
            description="Directory (pvc://<claim>/<path> or a local path) where labelled traffic is kept: "
            "<dir>/<adapter>/train.jsonl and holdout.jsonl (kubetune.api.monitoring.fresh_data_uris)."
        ),
    ] = None
    fresh_max_rows: Annotated[int, Field(description="Cap of kept rows (oldest dropped).", ge=100)] = 20000
    drop_fields: Annotated[list[str], Field(description="Request metadata fields never stored (PII).")] = []
    hash_fields: Annotated[
        list[str], Field(description="Request metadata fields stored only hashed (PII).")
    ] = []
    review: Annotated[
        ReviewSpec,
        Field(description="The review queue of uncertain/novel inputs (kept only with freshDataUri)."),
    ] = ReviewSpec()


class TaskServing(ApiModel):
    """One task behind the server: a base model, its adapters, and how its requests are batched."""

    base_model: Annotated[BaseModelSpec, Field(description="The base model, loaded once.")]
    task: Annotated[ServeTask, Field(description="causal-lm (chat/completions) or sequence-classification.")]
    base_model_id: Annotated[
        str,
        Field(
            description="Model id under which the bare base model is served (causal-lm only).",
            max_length=63,
            pattern=DNS1123_LABEL,
        ),
    ] = "base"
    labels: Annotated[
        list[str] | None,
        Field(
            description="sequence-classification: the label set; default: from the first adapter's "
            "kubetune.json. Every adapter must use the same number of labels.",
            min_length=2,
        ),
    ] = None
    adapters: Annotated[
        list[AdapterSpec], Field(description="Loaded eagerly before /readyz turns ready.")
    ] = []
    max_batch_size: Annotated[int, Field(description="Rows per forward pass.", ge=1, le=256)] = 8
    batch_wait_ms: Annotated[
        float, Field(description="How long the first request of a batch waits for company.", ge=0, le=1000)
    ] = 10.0
    max_input_tokens: Annotated[
        int,
        Field(
            description="Longest input in tokens: a longer prompt gets HTTP 400; a longer classification "
            "input is cut to it (truncate) or fails alone. Text over 16 characters per token of it is "
            "refused (or cut, with truncate) before tokenizing. A completions request takes at most "
            "maxBatchSize prompts.",
            ge=1,
            le=32768,
        ),
    ] = 512
    truncate: Annotated[
        bool,
        Field(
            description="sequence-classification: cut inputs to maxInputTokens (as the trainer cuts to "
            "maxSeqLength) and mark them truncated; false: such an input gets its own error in the batch.",
        ),
    ] = True
    max_new_tokens: Annotated[
        int, Field(description="Upper bound (and default) for max_tokens.", ge=1, le=8192)
    ] = 256
    monitoring: Annotated[ServeMonitoring, Field(description="Drift/accuracy monitoring.")] = (
        ServeMonitoring()
    )

    @model_validator(mode="after")
    def _unique_adapters(self) -> TaskServing:
        seen: set[tuple[str, str]] = set()
        for i, adapter in enumerate(self.adapters):
            if (adapter.name, adapter.version) in seen:
                raise ValueError(f"adapters[{i}]: {adapter.name}@{adapter.version} is listed twice")
            if adapter.name == self.base_model_id:
                raise ValueError(f"adapters[{i}].name: {adapter.name!r} is the baseModelId; rename one")
            seen.add((adapter.name, adapter.version))
        if self.labels is not None and self.task != "sequence-classification":
            raise ValueError("labels applies only to task sequence-classification")
        return self

    def model_ids(self) -> set[str]:
        """Every id a client may send to this task: adapter names, name@version, the causal-lm base."""
        ids = {a.name for a in self.adapters} | {f"{a.name}@{a.version}" for a in self.adapters}
        return ids | ({self.base_model_id} if self.task == "causal-lm" else set())


class ServeConfig(TaskServing):
    """Everything `kubetune serve` needs; camelCase in YAML like the CRDs. The top-level task fields
    describe the first task; `tasks` adds more behind the same URL."""

    tasks: Annotated[
        list[TaskServing],
        Field(
            description="More tasks served by this pod, each on its own base (e.g. a classifier beside a "
            "chat model); one task of each kind, model ids unique across all.",
            max_length=1,
        ),
    ] = []
    max_queued: Annotated[
        int,
        Field(
            description="Inference requests one server holds at once (waiting or computing); more get "
            "HTTP 429 with Retry-After, so admitted requests keep their latency under overload.",
            ge=1,
            le=100_000,
        ),
    ] = 64
    max_body_bytes: Annotated[
        int,
        Field(
            description="Largest request body; a longer one gets HTTP 413 before it is read to the end or "
            "parsed (Content-Length, or the bytes counted as a chunked body arrives).",
            ge=1024,
            le=1 << 30,
        ),
    ] = 1 << 20
    max_inputs_per_request: Annotated[
        int,
        Field(
            description="Most inputs one /v1/classify request may carry (more: HTTP 400); a request's "
            "inputs share forward passes in turn with other requests'.",
            ge=1,
            le=4096,
        ),
    ] = 256
    precision: Annotated[
        Precision,
        Field(
            description="Weights dtype: auto = bf16 on CUDA / CPUs with native bf16 (causal-lm on CPUs: "
            "fp32), else fp32."
        ),
    ] = "auto"
    quantize: Annotated[
        Quantize,
        Field(
            description="int4: weight-only 4-bit linears (groups of 32, CPU kernel; lossless for a base "
            "dequantized from a Q4_1 GGUF, lossy otherwise: the load logs the error); none: the serving "
            "precision's weights."
        ),
    ] = "none"
    merge_single_adapter: Annotated[
        bool,
        Field(
            description="While one adapter is loaded and a batch holds only its requests, fold its LoRA "
            "into the base weights (no LoRA matmuls per token); a base-model request or a second adapter "
            "unfolds it first."
        ),
    ] = True
    host: str = "0.0.0.0"
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    drain_timeout_s: Annotated[
        float, Field(description="SIGTERM: how long in-flight requests may take to finish.", gt=0, le=3600)
    ] = 30.0
    feedback_window: Annotated[
        int, Field(description="Feedback events per adapter version in the rolling accuracy.", ge=1, le=10**6)
    ] = 1000
    pvc_mounts: Annotated[dict[str, str], Field(description="PVC claim -> local mount directory.")] = {}
    cache_dir: Annotated[str, Field(description="Converted weights and downloaded adapters.")] = (
        "~/.cache/kubetune"
    )
    admin_token: Annotated[
        SecretStr | None,
        Field(
            description=f"Bearer token for /admin (env {ADMIN_TOKEN_ENV}, from a Secret); unset "
            "disables /admin.",
            exclude=True,
        ),
    ] = Field(default_factory=_admin_token_from_env)

    engine: Annotated[
        EngineSpec | None,
        Field(
            description="Front an OpenAI-compatible engine instead of loading the model here (causal-lm, "
            "one task): request ids, metrics, feedback and shedding stay here, generation runs there."
        ),
    ] = None

    @model_validator(mode="after")
    def _tasks_apart(self) -> ServeConfig:
        if self.engine is not None and (self.task != "causal-lm" or self.tasks):
            raise ValueError("engine: fronting an engine takes one causal-lm task (no tasks, no classifier)")
        for i, extra in enumerate(self.tasks):
            if extra.task == self.task:
                raise ValueError(f"tasks[{i}].task: {extra.task} is already the top-level task; one of each")
            shared = extra.model_ids() & self.model_ids()
            if shared:
                raise ValueError(
                    f"tasks[{i}]: model ids {sorted(shared)} are also served by the top-level task"
                )
        return self

    def task_configs(self) -> list[ServeConfig]:
        """One complete ServeConfig per task (server-level fields shared), the top-level task first."""
        first = self.model_copy(update={"tasks": []})
        fields = set(TaskServing.model_fields)
        return [first] + [
            first.model_copy(update={name: getattr(t, name) for name in fields}) for t in self.tasks
        ]

    def locate(self, uri: str) -> str:
        """pvc://claim/path -> <mount>/path; file:// -> path; other URIs unchanged."""
        if uri.startswith("file://"):
            return uri[len("file://") :]
        if uri.startswith("pvc://"):
            claim, _, rest = uri[len("pvc://") :].partition("/")
            if claim not in self.pvc_mounts:
                raise ConfigError(f"{uri}: PVC {claim!r} is not mounted here (pvcMounts: {claim}: <dir>)")
            return f"{self.pvc_mounts[claim].rstrip('/')}/{rest}"
        return uri


def load_serve_config(path: Path) -> ServeConfig:
    """Read serve-config.yaml; every problem becomes one ConfigError line naming the field."""
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: {err}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping (a ServeConfig)")
    if "adminToken" in doc or "admin_token" in doc:
        raise ConfigError(
            f"{path}: adminToken must not be in a file; set env {ADMIN_TOKEN_ENV} from a Secret"
        )
    if isinstance(doc.get("engine"), dict) and ({"apiKey", "api_key"} & set(doc["engine"])):
        raise ConfigError(f"{path}: engine.apiKey must not be in a file; set env {ENGINE_API_KEY_ENV}")
    try:
        config = ServeConfig.model_validate(doc)
    except ValidationError as err:
        raise ConfigError(f"{path}: {format_validation_error(err)}") from None
    if config.engine is not None and config.engine.config_file is None:  # re-read on changes
        engine = config.engine.model_copy(update={"config_file": str(path)})
        config = config.model_copy(update={"engine": engine})
    return config
