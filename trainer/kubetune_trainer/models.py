"""Find and load the base model (pkg://, path, pvc://, HF id, GGUF), then wrap it with LoRA (peft)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kubetune.api.trainconfig import TrainConfig
from kubetune.api.uris import MODEL_RULES, UnsafeUriError, check_uri
from kubetune_trainer.errors import ModelLoadError

# Output layers that are trained in full (classification) or left alone (causal-lm), never LoRA targets.
HEAD_NAMES = frozenset({"classifier", "score", "lm_head", "qa_outputs"})


def package_model_dir(distribution: str, gguf_file: str | None = None) -> Path:
    """The folder inside an installed Python distribution that holds config.json (or the GGUF file).

    Located from the distribution's file list, without importing the package (importing may pull
    dependencies a model file does not need).
    """
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise ModelLoadError(
            f"pkg://{distribution}: Python package {distribution!r} is not installed"
        ) from None
    wanted = gguf_file or "config.json"
    hits = sorted(
        (Path(str(dist.locate_file(f))).parent for f in dist.files or [] if f.name == wanted),
        key=lambda p: len(p.parts),
    )
    if not hits:
        raise ModelLoadError(f"pkg://{distribution}: no {wanted} among the package's files")
    return hits[0]


def resolve_model_location(config: TrainConfig) -> str:
    """A local directory, or an HF hub id passed to transformers as is."""
    name = config.base_model.name
    try:
        check_uri(name, MODEL_RULES, "baseModel.name")
    except UnsafeUriError as err:
        raise ModelLoadError(str(err)) from None
    if name.startswith("pkg://"):
        return str(package_model_dir(name[len("pkg://") :], config.base_model.gguf_file))
    if name.startswith(("pvc://", "/")):
        path = config.locate(name)
        if not Path(path).is_dir():
            raise ModelLoadError(f"{name}: {path} is not a directory")
        return path
    if name.startswith(("s3://", "https://")):
        raise ModelLoadError(
            f"{name}: base models from {name.split(':')[0]} are not supported by this "
            "trainer yet; copy the model to a PVC and use pvc://"
        )
    return name


def _auto_class(task_type: str) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    return AutoModelForCausalLM if task_type == "causal-lm" else AutoModelForSequenceClassification


def dequantized_gguf_dir(location: str, gguf_file: str, config: TrainConfig) -> Path:
    """Dequantize a GGUF once into safetensors under cache_dir and return that folder.

    transformers dequantizes GGUF on every load (slow) and refuses save_pretrained while the model
    carries its GGUF quantization config, which no longer describes the float weights it holds; we
    drop that config before saving.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = Path(location) / gguf_file
    stamp = (
        f"{source.resolve()}:{source.stat().st_size}:{source.stat().st_mtime_ns}"
        if source.exists()
        else str(source)
    )
    key = hashlib.sha256(stamp.encode()).hexdigest()[:16]
    target = Path(os.path.expanduser(config.cache_dir)) / "gguf" / f"{Path(gguf_file).stem}-{key}"
    if (target / "config.json").exists():
        return target
    model = AutoModelForCausalLM.from_pretrained(location, gguf_file=gguf_file, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(location, gguf_file=gguf_file)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(target)  # atomic: a concurrent or killed conversion never leaves a half cache entry
    except OSError:
        # Another process converting the same GGUF (pods sharing a cache volume) renamed first: its
        # folder holds the same weights; ours goes.
        if not (target / "config.json").exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_tokenizer_and_model(config: TrainConfig, labels: list[str]) -> tuple[Any, Any]:
    """The tokenizer and the float (or 4-bit, on CUDA) base model, on the training device."""
    from transformers import AutoTokenizer

    location = resolve_model_location(config)
    if config.base_model.gguf_file:
        location = str(dequantized_gguf_dir(location, config.base_model.gguf_file, config))
    kwargs: dict[str, Any] = {"revision": config.base_model.revision} if config.base_model.revision else {}
    if config.task.type == "sequence-classification":
        kwargs |= {
            "num_labels": len(labels),
            "id2label": dict(enumerate(labels)),
            "label2id": {label: i for i, label in enumerate(labels)},
        }
    if config.lora.quantization == "4bit":
        kwargs["quantization_config"] = four_bit_config()
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            location, **({"revision": kwargs["revision"]} if "revision" in kwargs else {})
        )
        model = _auto_class(config.task.type).from_pretrained(location, dtype=torch.float32, **kwargs)
    except OSError as err:
        raise ModelLoadError(f"{config.base_model.name}: cannot load: {err}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if config.task.type == "sequence-classification" and sentence_mean_pooling(location):
        use_mean_pooling(model)
    return tokenizer, model


# ---------------------------------------------------------------- classifier pooling (LP-FT)
#
# BertForSequenceClassification classifies from BERT's pooler (CLS token -> dense -> tanh). Sentence-
# transformers checkpoints such as all-MiniLM-L6-v2 never trained that pooler: they were trained to be
# read as the L2-normalised mean of the token states. So for such models (their modules.json says
# mean pooling) the head reads exactly that embedding, which is also the linear probe's input; the
# head can then start as the fitted probe (LP-FT, Kumar et al. 2022: linear probe, then fine-tune,
# so fine-tuning starts from a good head instead of distorting features to fit a random one).
# Trainer and server both load the base through load_tokenizer_and_model, so both pool alike; the
# adapter records it in kubetune.json ("pooling").


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token states where mask is 1 (padding excluded)."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)


def sentence_mean_pooling(location: str) -> bool:
    """True for a local sentence-transformers model whose Pooling module uses mean pooling."""
    import json

    modules = Path(location) / "modules.json"
    if not modules.is_file():
        return False
    for module in json.loads(modules.read_text()):
        if module.get("type", "").endswith("models.Pooling"):
            pooling = Path(location) / module.get("path", "") / "config.json"
            return pooling.is_file() and bool(json.loads(pooling.read_text()).get("pooling_mode_mean_tokens"))
    return False


class MeanPooler(torch.nn.Module):
    """Stands in for BERT's pooler: the L2-normalised masked mean of the last hidden states.

    BertModel calls its pooler with the hidden states only; the attention mask of the same forward
    pass is handed over by a pre-hook on the encoder model (see use_mean_pooling).
    """

    def __init__(self) -> None:
        super().__init__()
        self.mask: torch.Tensor | None = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        mask = self.mask if self.mask is not None else hidden.new_ones(hidden.shape[:2])
        return torch.nn.functional.normalize(mean_pool(hidden, mask.to(hidden.device)), dim=-1)


def use_mean_pooling(model: Any) -> None:
    """Make a BERT-style classifier read the mean-pooled embedding; a no-op for heads without a pooler
    (RoBERTa, DistilBERT, decoder models classify from their own token and keep doing so)."""
    encoder = model.base_model
    if getattr(encoder, "pooler", None) is None:
        return
    pooler = MeanPooler()
    encoder.pooler = pooler

    def remember_mask(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        mask = kwargs.get("attention_mask")
        pooler.mask = mask if mask is not None or len(args) < 2 else args[1]

    encoder.register_forward_pre_hook(remember_mask, with_kwargs=True)


def classifier_pooling(model: Any) -> str:
    """'mean' when the classifier reads the mean-pooled embedding, else 'model' (the architecture's own)."""
    return "mean" if any(isinstance(m, MeanPooler) for m in model.modules()) else "model"


def init_head_from_probe(model: Any, coef: np.ndarray, intercept: np.ndarray, classes: np.ndarray) -> None:
    """Copy a fitted logistic regression into the trainable classification head (the LP of LP-FT).

    coef/intercept are sklearn's: one row per class seen in training, or a single row for two classes
    (sigmoid), which is the softmax with logits (-z/2, +z/2). Classes absent from training get a
    bias far below the others, as the probe never predicts them either.
    """
    head = trainable_head(model)
    n_labels, width = head.weight.shape
    if coef.shape[0] == 1 and len(classes) == 2:
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
    weight = np.zeros((n_labels, width), dtype=np.float32)
    bias = np.full(n_labels, -20.0, dtype=np.float32)
    weight[classes], bias[classes] = coef, intercept
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(weight))
        head.bias.copy_(torch.from_numpy(bias))


def trainable_head(model: Any) -> torch.nn.Linear:
    """The classification Linear that training updates (peft's modules_to_save copy once wrapped)."""
    head = model.base_model.model.classifier if hasattr(model, "peft_config") else model.classifier
    if hasattr(head, "modules_to_save"):
        head = head.modules_to_save["default"]
    if not isinstance(head, torch.nn.Linear):
        raise ModelLoadError(f"{type(model).__name__}: the classification head is not a single Linear layer")
    return head


def four_bit_config() -> Any:
    """QLoRA base weights; bitsandbytes kernels exist only for CUDA, so anything else is a clear error."""
    if not torch.cuda.is_available():
        raise ModelLoadError(
            "lora.quantization: 4bit needs a CUDA GPU (bitsandbytes) and none is visible; "
            "set lora.quantization: none or request resources.gpusPerNode >= 1"
        )
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
    )


def resolve_target_modules(model: torch.nn.Module, requested: list[str]) -> list[str]:
    """`[auto]` -> the leaf names of every nn.Linear except output heads, e.g. BERT: query, key, value,
    dense; Llama: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj."""
    if requested != ["auto"]:
        return requested
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and not (set(name.split(".")) & HEAD_NAMES)
    }
    if not names:
        raise ModelLoadError(f"{type(model).__name__}: no linear layers found for targetModules: [auto]")
    return sorted(names)


def head_modules(model: torch.nn.Module, task_type: str) -> list[str]:
    """Classification heads start random, so they are trained in full (peft modules_to_save)."""
    if task_type != "sequence-classification":
        return []
    return sorted({name.rsplit(".", 1)[-1] for name, _ in model.named_children() if name in HEAD_NAMES})


def apply_lora(model: Any, config: TrainConfig, full_rank: bool = False) -> Any:
    """Wrap with LoRA (lora settings); `full_rank` (training.recipe full): a full-rank LoRA whose
    training is exactly a full fine-tune of every targeted Linear (recipes.make_full_rank)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    from kubetune_trainer.recipes import full_rank_kwargs, make_full_rank

    if config.lora.quantization == "4bit":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    targets = resolve_target_modules(model, config.lora.target_modules)
    size: dict[str, Any] = {
        "r": config.lora.r,
        "lora_alpha": config.lora.alpha,
        "lora_dropout": config.lora.dropout,
    }
    lora = LoraConfig(
        **(full_rank_kwargs(model, targets) if full_rank else size),
        target_modules=targets,
        modules_to_save=head_modules(model, config.task.type) or None,
        task_type="SEQ_CLS" if config.task.type == "sequence-classification" else "CAUSAL_LM",
    )
    wrapped = get_peft_model(model, lora)
    if full_rank:
        make_full_rank(wrapped)
    return wrapped
