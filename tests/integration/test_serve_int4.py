"""`quantize: int4` on the real SmolLM2-135M (dequantized from a Q4_1 GGUF): its 210 Q4_1 matrices
are stored again without loss; with the kernel's bf16 rounding of each layer's input the greedy
answers here still equal fp32's, and rows of two adapters and the base that join a running batch
answer exactly as each served alone."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubetune_trainer.serve.adapters import AdapterRegistry
from kubetune_trainer.serve.config import AdapterSpec, ServeConfig
from kubetune_trainer.serve.decode import RunningBatch
from kubetune_trainer.serve.inference import GenerationRow
from kubetune_trainer.serve.quantize import Int4Linear
from test_serve_decode import PROMPTS, run_until_done
from test_serve_helpers import SMOLLM, loaded_registry, make_adapters

MODELS = ["pirate", "poet", "base", "pirate"]


def registry_of(folders: dict[str, Path], quantize: str) -> AdapterRegistry:
    config = ServeConfig(
        base_model=SMOLLM,
        task="causal-lm",
        precision="fp32",
        quantize=quantize,  # type: ignore[arg-type]
        adapters=[AdapterSpec(name=n, version="v1", uri=str(p)) for n, p in folders.items()],
    )
    return loaded_registry(config)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_adapters(SMOLLM, "causal-lm", tmp_path_factory.mktemp("int4"), {"pirate": 11, "poet": 22})


@pytest.fixture(scope="module")
def int4(folders: dict[str, Path]) -> AdapterRegistry:
    return registry_of(folders, "int4")


def rows(reg: AdapterRegistry, tokens: int = 16) -> list[GenerationRow]:
    return [
        GenerationRow(reg.resolve(m), reg.tokenizer(p).input_ids, tokens)
        for m, p in zip(MODELS, PROMPTS, strict=True)
    ]


def alone(reg: AdapterRegistry) -> list[list[int]]:
    out = []
    for r in rows(reg):
        run_until_done(RunningBatch(reg), {0: [r]})
        out.append(r.generated)
    return out


def test_every_q4_1_matrix_of_the_gguf_base_is_4_bit_without_loss(int4: AdapterRegistry) -> None:
    layers = [m for m in int4.model.modules() if isinstance(m, Int4Linear)]
    assert len(layers) == 30 * 7  # q k v o gate up down per layer; the lm_head (Q8_0 in the GGUF) stays
    assert max(layer.error for layer in layers) == 0.0


def test_int4_answers_as_fp32(int4: AdapterRegistry, folders: dict[str, Path]) -> None:
    assert alone(int4) == alone(registry_of(folders, "none"))


def test_int4_rows_joining_mid_decode_answer_as_alone(int4: AdapterRegistry) -> None:
    expected = alone(int4)
    together = rows(int4)
    run_until_done(RunningBatch(int4), {0: together[:2], 3: [together[2]], 5: [together[3]]})
    assert [r.generated for r in together] == expected
    assert int4.folded is None, "int4 weights are never folded into"
