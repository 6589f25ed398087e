"""The single-adapter fast path on the real SmolLM2-135M: a pod serving one adapter folds its LoRA
into the base weights, answers (greedy) exactly as the unmerged adapter does, and unfolds, leaving the
base weights as they were, as soon as a base-model row, a second adapter or an unload needs it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from kubetune_trainer.serve.adapters import AdapterRegistry
from kubetune_trainer.serve.config import AdapterSpec, ServeConfig
from kubetune_trainer.serve.decode import RunningBatch
from kubetune_trainer.serve.inference import GenerationRow
from test_serve_decode import PROMPTS, run_until_done
from test_serve_helpers import SMOLLM, loaded_registry, make_adapters


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_adapters(SMOLLM, "causal-lm", tmp_path_factory.mktemp("fold"), {"pirate": 11, "poet": 22})


def one_adapter(folders: dict[str, Path], precision: str = "fp32") -> AdapterRegistry:
    config = ServeConfig(
        base_model=SMOLLM,
        task="causal-lm",
        precision=precision,  # type: ignore[arg-type]
        adapters=[AdapterSpec(name="pirate", version="v1", uri=str(folders["pirate"]))],
    )
    return loaded_registry(config)


@pytest.fixture(scope="module")
def registry(folders: dict[str, Path]) -> AdapterRegistry:
    return one_adapter(folders)


def answers(reg: AdapterRegistry, models: list[str], tokens: int = 16) -> list[list[int]]:
    """The rows served together in one running batch; the second half joins at step 2."""
    prompts = PROMPTS[: len(models)]
    rows = [
        GenerationRow(reg.resolve(m), reg.tokenizer(p).input_ids, tokens)
        for m, p in zip(models, prompts, strict=True)
    ]
    half = len(rows) // 2 or 1
    run_until_done(RunningBatch(reg), {0: rows[:half], 2: rows[half:]})
    return [r.generated for r in rows]


def unmerged(reg: AdapterRegistry, models: list[str]) -> list[list[int]]:
    reg.config = reg.config.model_copy(update={"merge_single_adapter": False})
    try:
        return answers(reg, models)
    finally:
        reg.config = reg.config.model_copy(update={"merge_single_adapter": True})


def base_weights(reg: AdapterRegistry) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in reg.model.named_parameters() if "lora_" not in n}


def test_one_adapters_rows_run_folded_and_answer_as_unmerged(registry: AdapterRegistry) -> None:
    expected = unmerged(registry, ["pirate"] * 4)
    assert registry.folded is None
    got = answers(registry, ["pirate"] * 4)
    assert registry.folded == registry.resolve("pirate").peft_name
    assert got == expected


def test_a_base_row_joining_unfolds_and_base_weights_come_back(registry: AdapterRegistry) -> None:
    answers(registry, ["pirate"])
    assert registry.folded is not None
    before = base_weights(registry)
    answers(registry, ["base"])  # a base row unfolds
    clean = base_weights(registry)
    assert any(not torch.equal(before[n], clean[n]) for n in clean), "the fold changed no base weight"
    expected = unmerged(registry, ["pirate", "base", "pirate", "base"])
    answers(registry, ["pirate"])
    got = answers(registry, ["pirate", "base", "pirate", "base"])  # base rows join a folded batch
    assert registry.folded is None
    assert got == expected
    after = base_weights(registry)
    for name, weight in clean.items():  # fp32: peft's subtraction, within rounding
        torch.testing.assert_close(after[name], weight, rtol=0, atol=1e-6)


def test_a_second_adapter_unfolds_and_unloading_it_folds_again(
    registry: AdapterRegistry, folders: dict[str, Path]
) -> None:
    folded = answers(registry, ["pirate"])
    registry.load(AdapterSpec(name="poet", version="v1", uri=str(folders["poet"])))
    assert registry.folded is None
    pirate, poet = answers(registry, ["pirate", "poet"])  # routed per row, unmerged
    assert [pirate] == folded and poet != pirate
    assert answers(registry, ["pirate"]) and registry.folded is None, "two loaded: nothing to fold"
    registry.unload("poet", None)
    answers(registry, ["pirate"])
    assert registry.folded == registry.resolve("pirate").peft_name


def test_in_bf16_unfolding_restores_the_base_weights_bit_for_bit(folders: dict[str, Path]) -> None:
    reg = one_adapter(folders, "bf16")
    answers(reg, ["base"])
    clean = base_weights(reg)
    answers(reg, ["pirate"])
    assert reg.folded is not None
    answers(reg, ["base"])
    assert reg.folded is None
    after = base_weights(reg)
    assert all(torch.equal(after[n], w) for n, w in clean.items())
