"""`serving.quantize: int4`: weights on GGUF's Q4_1 grid come back exactly, others with their error
reported; peft's LoRA runs on top of a quantized layer as on a float one. Outputs differ from fp32 by
the kernel's bf16 rounding of each layer's input and output only (relative 2^-8)."""

from __future__ import annotations

import copy

import torch
from kubetune_trainer.serve.quantize import GROUP, Int4Linear, pack_int4, quantize_int4
from peft import LoraConfig, get_peft_model


def q4_1_weight(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """What a Q4_1 GGUF dequantizes to: per block of 32 inputs, w = d * q + m, q in 0..15, d and m fp16."""
    g = torch.Generator().manual_seed(seed)
    d = (torch.rand(rows, cols // GROUP, 1, generator=g) * 0.01 + 1e-3).half().float()
    m = (torch.randn(rows, cols // GROUP, 1, generator=g) * 0.05).half().float()
    q = torch.randint(0, 16, (rows, cols // GROUP, GROUP), generator=g).float()
    q[..., 0], q[..., 1] = 0, 15  # every block spans its grid, as Q4_1's rounding makes it
    return (d * q + m).reshape(rows, cols)


def relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).norm() / want.norm())


def linear_with(weight: torch.Tensor, bias: bool = True) -> torch.nn.Linear:
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias)
    with torch.no_grad():
        layer.weight.copy_(weight)
    return layer


def test_a_q4_1_weight_is_stored_without_loss() -> None:
    weight = q4_1_weight(96, 128)
    _, _, error = pack_int4(weight)
    assert error < 1e-6
    layer = linear_with(weight)
    x = torch.randn(5, 3, 128)
    with torch.no_grad():  # what is left is the kernel's bf16 rounding of inputs and outputs (2^-8)
        assert relative(Int4Linear(layer)(x), layer(x)) < 4e-3


def test_any_other_weight_loses_what_4_bits_lose_and_says_so() -> None:
    weight = torch.randn(64, 96)
    layer = linear_with(weight, bias=False)
    quantized = Int4Linear(layer)
    assert 0.02 < quantized.error < 0.2  # a Gaussian row on a 16-level grid per 32 weights
    x = torch.randn(8, 96)
    with torch.no_grad():
        assert relative(quantized(x), layer(x)) < quantized.error * 1.5


def test_quantize_swaps_linears_but_keeps_heads_and_widths_the_kernel_cannot_take() -> None:
    model = torch.nn.Sequential()
    model.add_module("proj", linear_with(q4_1_weight(64, 64)))
    model.add_module("up", linear_with(q4_1_weight(128, 64)))
    model.add_module("odd_out", torch.nn.Linear(128, 33))  # outputs: a multiple of 16
    model.add_module("odd_in", torch.nn.Linear(33, 32))  # inputs: a multiple of 32
    model.add_module("classifier", torch.nn.Linear(32, 16))
    assert quantize_int4(model, keep=("classifier",)) == 2
    kinds = {name: type(child).__name__ for name, child in model.named_children()}
    assert kinds == {
        "proj": "Int4Linear",
        "up": "Int4Linear",
        "odd_out": "Linear",
        "odd_in": "Linear",
        "classifier": "Linear",
    }


class Tiny(torch.nn.Module):
    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.q_proj = linear_with(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.q_proj(x)


def test_lora_on_a_quantized_layer_adds_the_same_delta() -> None:
    base = Tiny(q4_1_weight(64, 96, seed=3))
    quantized_base = copy.deepcopy(base)
    quantize_int4(quantized_base)
    config = LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False)
    floating = get_peft_model(copy.deepcopy(base), config)
    quantized = get_peft_model(quantized_base, config)
    lora = {k: v for k, v in floating.state_dict().items() if "lora_" in k}
    quantized.load_state_dict(lora, strict=False)  # the same LoRA weights
    x = torch.randn(4, 96)
    with torch.no_grad():
        assert not torch.allclose(floating(x), base(x), atol=1e-3), "the LoRA did nothing"
        assert relative(quantized(x), floating(x)) < 4e-3
