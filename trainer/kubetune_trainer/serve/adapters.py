"""The base model, loaded once, and the LoRA adapters on it, loaded and unloaded by name@version.

Every method that touches the model runs on the server's single model thread (see batching.py), so a
load or unload never races a forward pass. Each loaded version gets a fresh peft adapter key that is
never reused, so a same-name reload can never hit stale weights; `name` (no version) routes to the
version loaded last.
"""

from __future__ import annotations

import gc
import hashlib
import itertools
import json
import logging
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kubetune.api.finetunejob import BaseModelSpec, LoraSpec, TaskSpec
from kubetune.api.loading import ConfigError
from kubetune.api.uris import S3_BUCKET, SYSTEM_PATH, TRAVERSAL, UnsafeUriError, check_uri
from kubetune_trainer import models
from kubetune_trainer.artifacts import adapter_digest, file_digest
from kubetune_trainer.closed_set import AnswerSchema
from kubetune_trainer.fetch import s3_endpoint
from kubetune_trainer.serve import closed_answers
from kubetune_trainer.serve.config import AdapterSpec, ServeConfig
from kubetune_trainer.serve.errors import AdapterDigestError, AdapterLoadError, ModelNotFoundError
from kubetune_trainer.serve.merging import Folded
from kubetune_trainer.serve.precision import serving_dtype
from kubetune_trainer.serve.quantize import heads, quantize_int4

log = logging.getLogger("kubetune.serve")
WEIGHTS = "adapter_model.safetensors"
PEFT_BASE = "__base__"  # peft's name for "no adapter" in a mixed batch (adapter_names)
WARMUP_TEXT = "Hello"


@dataclass(frozen=True)
class ModelSource:
    """The slice of TrainConfig that kubetune_trainer.models reads, filled from a ServeConfig."""

    base_model: BaseModelSpec
    task: TaskSpec
    cache_dir: str
    config: ServeConfig
    lora: LoraSpec = field(default_factory=LoraSpec)

    def locate(self, uri: str) -> str:
        return self.config.locate(uri)


@dataclass(frozen=True)
class LoadedAdapter:
    name: str
    version: str
    uri: str
    digest: str
    key: str  # peft adapter name, unique per load
    labels: tuple[str, ...]
    parameters: int
    loaded_at: float
    temperature: float = 1.0  # classification: logits / T (the trainer's temperature scaling)
    answer_schema: AnswerSchema | None = None  # causal-lm: answers chosen among these values
    heads: Any = None  # training.recipe heads: decoder_heads.FieldHeads that answer instead of decoding
    prompt_frame: dict[str, Any] | None = None  # kubetune.json "prompt": how /v1/classify frames an input

    @property
    def model_id(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class Target:
    """What a request's `model` resolved to: an adapter, or the base (adapter None)."""

    model_id: str
    adapter: LoadedAdapter | None

    @property
    def peft_name(self) -> str:
        return self.adapter.key if self.adapter else PEFT_BASE

    @property
    def served_id(self) -> str:
        """name@version actually answering (a bare `name` resolves to one version)."""
        return self.adapter.model_id if self.adapter else self.model_id

    @property
    def label_values(self) -> tuple[str, str]:
        """(adapter, version) metric labels."""
        return (self.adapter.name, self.adapter.version) if self.adapter else (self.model_id, "")


class AdapterRegistry:
    """Owns tokenizer + model; maps model ids to loaded adapters."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.tokenizer: Any = None
        self.model: Any = None  # the plain base, or a PeftModel once an adapter is loaded
        self.labels: tuple[str, ...] = tuple(config.labels or ())
        self._keys = itertools.count(1)
        self._lock = threading.Lock()  # guards the maps below; readers are on the event loop
        self._loaded: dict[tuple[str, str], LoadedAdapter] = {}
        self._default: dict[str, str] = {}  # name -> version served for a bare `name`
        self.dtype = serving_dtype(config.precision, task=config.task)
        # Rows decoding with an adapter pin its key; unloading a pinned key frees it when the last row
        # leaves (model thread only), so a hot swap never changes weights under a running answer.
        self._pinned: Counter[str] = Counter()
        self._doomed: set[str] = set()
        self._folded: Folded | None = None  # the one adapter merged into the base weights, if any

    # ---- loading (model thread) -------------------------------------------------------------------
    def load_base(self) -> None:
        labels = list(self.labels) or self._labels_from_first_adapter()
        source = ModelSource(
            base_model=self.config.base_model,
            task=TaskSpec(type=self.config.task),
            cache_dir=self.config.cache_dir,
            config=self.config,
        )
        self.tokenizer, self.model = models.load_tokenizer_and_model(source, labels)  # type: ignore[arg-type]
        # Padding stays as the base expects (BERT: right, or position ids shift); generate_rows left-pads
        # by hand.
        self.model.to(self.dtype).eval()
        if self.config.quantize == "int4":
            quantize_int4(self.model, keep=heads(self.model, self.config.task))
        self.labels = tuple(labels)

    def _labels_from_first_adapter(self) -> list[str]:
        if self.config.task != "sequence-classification":
            return []
        if not self.config.adapters:
            raise AdapterLoadError("sequence-classification needs `labels` or at least one adapter")
        return list(read_adapter_meta(self.adapter_dir(self.config.adapters[0].uri)).get("labels") or [])

    def load(self, spec: AdapterSpec) -> LoadedAdapter:
        """Load, warm up with one real forward pass, then route `name` to it."""
        from peft import PeftModel

        folder = self.adapter_dir(spec.uri)
        digest = verified_digest(spec, folder)
        meta = read_adapter_meta(folder)
        labels = tuple(meta.get("labels") or self.labels)
        self._check_compatible(spec, folder, meta, labels)
        temperature = adapter_temperature(spec, meta)
        answer_schema = closed_answers.answer_schema(f"{spec.name}@{spec.version}", meta)
        prompt_frame = closed_answers.prompt_frame(f"{spec.name}@{spec.version}", meta)
        key = f"kt{next(self._keys)}"
        self.unfold()  # peft adds adapters to unmerged layers; the next step folds again if it can
        before = self.parameter_count()
        try:
            if hasattr(self.model, "peft_config"):
                self.model.load_adapter(str(folder), adapter_name=key, is_trainable=False)
            else:
                self.model = PeftModel.from_pretrained(self.model, str(folder), adapter_name=key)
        except (OSError, ValueError, RuntimeError, KeyError) as err:
            raise AdapterLoadError(
                f"{spec.name}@{spec.version}: peft cannot load {spec.uri}: {err}"
            ) from None
        self.model.to(self.dtype).eval()  # the adapter's weights too: one dtype per matmul
        heads = closed_answers.field_heads(f"{spec.name}@{spec.version}", self.model, folder)
        loaded = LoadedAdapter(
            name=spec.name,
            version=spec.version,
            uri=spec.uri,
            digest=digest,
            key=key,
            labels=labels,
            parameters=self.parameter_count() - before,
            loaded_at=time.time(),
            temperature=temperature,
            answer_schema=answer_schema,
            heads=heads,
            prompt_frame=prompt_frame,
        )
        self.warm_up(Target(loaded.model_id, loaded))
        with self._lock:
            replaced = self._loaded.get((spec.name, spec.version))
            self._loaded[(spec.name, spec.version)] = loaded
            self._default[spec.name] = spec.version
        if replaced is not None:  # same name@version from a new URI: the old weights go now
            self._delete_key(replaced.key)
        log.info("loaded adapter %s (%s, %d parameters)", loaded.model_id, loaded.digest, loaded.parameters)
        return loaded

    def unload(self, name: str, version: str | None) -> list[LoadedAdapter]:
        """Unload one version (or every version of `name`) and free its weights."""
        with self._lock:
            gone = [a for (n, v), a in self._loaded.items() if n == name and version in (None, v)]
            if not gone:
                raise ModelNotFoundError(f"adapter {name}{'@' + version if version else ''} is not loaded")
            for adapter in gone:
                del self._loaded[(adapter.name, adapter.version)]
            left = sorted((a for a in self._loaded.values() if a.name == name), key=lambda a: a.loaded_at)
            if left:
                self._default[name] = left[-1].version
            else:
                self._default.pop(name, None)
        for adapter in gone:
            self._delete_key(adapter.key)
        return gone

    def pin(self, target: Target) -> None:
        if target.adapter is not None:
            self._pinned[target.adapter.key] += 1

    def release(self, target: Target) -> None:
        """The row pinning `target` left the batch; free its adapter now if it was unloaded meanwhile."""
        if target.adapter is None:
            return
        key = target.adapter.key
        self._pinned[key] -= 1
        if self._pinned[key] <= 0:
            del self._pinned[key]
            if key in self._doomed:
                self._doomed.discard(key)
                self._delete_key(key)

    def _delete_key(self, key: str) -> None:
        if self._pinned[key] > 0:
            self._doomed.add(key)
            return
        self.unfold()  # deleting a merged adapter would leave its delta in the base weights
        if set(self.model.peft_config) == {key}:
            # peft cannot run a PeftModel with no adapter left; unload() restores the plain base.
            self.model = self.model.unload()
        else:
            self.model.delete_adapter(key)
        gc.collect()

    def _check_compatible(
        self, spec: AdapterSpec, folder: Path, meta: dict[str, Any], labels: tuple[str, ...]
    ) -> None:
        config = json.loads((folder / "adapter_config.json").read_text())
        peft_task = config.get("task_type")
        wanted = "SEQ_CLS" if self.config.task == "sequence-classification" else "CAUSAL_LM"
        if peft_task not in (None, wanted) or meta.get("task", self.config.task) != self.config.task:
            raise AdapterLoadError(
                f"{spec.name}@{spec.version}: a {meta.get('task') or peft_task} adapter cannot be served "
                f"on this {self.config.task} server"
            )
        if self.config.task == "sequence-classification" and len(labels) != len(self.labels):
            raise AdapterLoadError(
                f"{spec.name}@{spec.version}: {len(labels)} labels, but the base head has {len(self.labels)}"
            )

    def adapter_dir(self, uri: str) -> Path:
        return adapter_folder(uri, self.config)

    def warm_up(self, target: Target) -> None:
        """One real forward pass, so neither readiness nor the first user waits on lazy initialisation."""
        batch = self.tokenizer([WARMUP_TEXT], return_tensors="pt")
        with torch.inference_mode():
            if self.config.task == "causal-lm":
                self.model.generate(
                    **batch,
                    max_new_tokens=1,
                    do_sample=False,
                    pad_token_id=self.tokenizer.pad_token_id,
                    **self.route([target]),
                )
            else:
                self.model(**batch, **self.route([target]))

    def route(self, targets: list[Target]) -> dict[str, Any]:
        """The forward-pass kwargs that give each row its adapter. Rows all of one adapter run it as
        peft's active adapter, folded into the base weights when it is the only one loaded
        (mergeSingleAdapter, not with quantize; merging.py); a mix or base rows route per row with
        peft's `adapter_names`."""
        if not hasattr(self.model, "peft_config"):
            return {}
        keys = {t.peft_name for t in targets}
        only = next(iter(keys)) if len(keys) == 1 else None
        if only is None or only == PEFT_BASE:
            self.unfold()
            return {"adapter_names": [t.peft_name for t in targets]}
        foldable = self.config.merge_single_adapter and self.config.quantize == "none"  # 4 bits: not exact
        if foldable and set(self.model.peft_config) == {only}:
            if self._folded is None:
                self._folded = Folded(self.model, only, self.dtype)
            return {}
        self.unfold()
        if self.model.active_adapter != only:
            self.model.set_adapter(only)  # peft's one-adapter path: no per-row gather and scatter
        return {}

    def unfold(self) -> None:
        """Take a folded adapter out of the base weights (the next one-adapter step folds it again);
        for callers that drive `self.model` with peft's `adapter_names` themselves."""
        if self._folded is not None:
            self._folded.unfold()
            self._folded = None

    @property
    def folded(self) -> str | None:
        """The peft key merged into the base weights now, if any."""
        return self._folded.key if self._folded else None

    # ---- lookups (any thread) ---------------------------------------------------------------------

    def resolve(self, model_id: str) -> Target:
        """`name`, `name@version` or the base id -> Target; ModelNotFoundError (404) otherwise."""
        if model_id == self.config.base_model_id and self.config.task == "causal-lm":
            return Target(model_id, None)
        name, _, version = model_id.partition("@")
        with self._lock:
            adapter = self._loaded.get((name, version or self._default.get(name, "")))
        if adapter is None:
            raise ModelNotFoundError(
                f"model {model_id!r} is not served here; GET /v1/models lists them", "model"
            )
        return Target(model_id, adapter)

    def refresh(self, target: Target) -> Target:
        """The same request resolved again: unchanged while its adapter is still loaded."""
        if target.adapter is None:
            return target
        with self._lock:
            still = self._loaded.get((target.adapter.name, target.adapter.version))
        return (
            target if still is not None and still.key == target.adapter.key else self.resolve(target.model_id)
        )

    def served(self) -> list[LoadedAdapter]:
        with self._lock:
            return sorted(self._loaded.values(), key=lambda a: (a.name, a.loaded_at))

    def default_version(self, name: str) -> str | None:
        with self._lock:
            return self._default.get(name)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.model.parameters()) if self.model is not None else 0


def verified_digest(spec: AdapterSpec, folder: Path) -> str:
    """The adapter's digest (artifacts.adapter_digest: every file a server reads from the folder);
    AdapterDigestError when the spec names another one (the folder was overwritten, tampered with or
    half copied since that version was recorded). A digest recorded before it covered more than the
    weights (sha256 of adapter_model.safetensors) still passes for a folder without heads, with a
    warning: its kubetune.json is not checked."""
    actual = adapter_digest(folder)
    if spec.digest is not None and actual != spec.digest and _legacy_weights_digest(spec, folder):
        log.warning(
            "adapter %s@%s: digest %s covers adapter_model.safetensors only (recorded by an older "
            "trainer); kubetune.json and adapter_config.json are not checked",
            spec.name,
            spec.version,
            spec.digest,
        )
        return actual
    if spec.digest is not None and actual != spec.digest:
        log.error(
            "refusing adapter %s@%s from %s: expected digest %s, found %s",
            spec.name,
            spec.version,
            spec.uri,
            spec.digest,
            actual,
        )
        raise AdapterDigestError(
            f"{spec.name}@{spec.version}: {spec.uri} holds other weights than this version: expected "
            f"digest {spec.digest}, found {actual} (the folder was overwritten or modified; refusing to "
            "serve it)"
        )
    return actual


def _legacy_weights_digest(spec: AdapterSpec, folder: Path) -> bool:
    """The spec pins the weights-only digest of an adapter without heads (never true for heads)."""
    from kubetune_trainer.decoder_heads import HEADS_FILE

    heads = (folder / HEADS_FILE).exists() or "heads" in read_adapter_meta(folder)
    return not heads and file_digest(folder / WEIGHTS) == spec.digest


def adapter_temperature(spec: AdapterSpec, meta: dict[str, Any]) -> float:
    """kubetune.json's temperature (1.0 for adapters trained before calibration, or elsewhere); a value
    that is not a positive finite number refuses the adapter rather than serving bent probabilities."""
    value = meta.get("temperature", 1.0)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < float("inf"):
        raise AdapterLoadError(
            f"{spec.name}@{spec.version}: kubetune.json temperature {value!r} is not a positive number"
        )
    return float(value)


def read_adapter_meta(folder: Path) -> dict[str, Any]:
    """kubetune.json written by the trainer (task, labels); {} for adapters made elsewhere."""
    path = folder / "kubetune.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def adapter_folder(uri: str, config: ServeConfig) -> Path:
    """Local folder holding adapter_config.json + adapter_model.safetensors (s3:// is downloaded
    under cache_dir, which a vLLM container beside this one mounts at the same path); the location
    rules are checked again first (the admin API takes URIs too)."""
    try:
        check_uri(uri, (TRAVERSAL, S3_BUCKET), "adapter")
        local = (
            download_s3(uri, config.cache_dir)
            if uri.startswith("s3://")
            else Path(check_uri(config.locate(uri), (SYSTEM_PATH,), "adapter"))
        )
    except (ConfigError, UnsafeUriError) as err:
        raise AdapterLoadError(str(err)) from None
    for folder in (local, local / "adapter"):
        if (folder / "adapter_config.json").is_file() and (folder / WEIGHTS).is_file():
            return folder
    raise AdapterLoadError(f"{uri}: no adapter_config.json + {WEIGHTS} in {local} or {local}/adapter")


def download_s3(uri: str, cache_dir: str) -> Path:
    """Copy s3://bucket/prefix to cache_dir/adapters/<hash> once (credentials from env, like the trainer)."""
    import boto3

    target = Path(os.path.expanduser(cache_dir)) / "adapters" / hashlib.sha256(uri.encode()).hexdigest()[:16]
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    client = boto3.client("s3", endpoint_url=s3_endpoint("adapter"))
    for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix.rstrip("/") + "/"
    ):
        for obj in page.get("Contents", []):
            dest = target / obj["Key"][len(prefix.rstrip("/")) + 1 :]
            dest.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, obj["Key"], str(dest))
    return target
