"""`serving.quantize: int4`: weight-only 4-bit linears on CPUs, with torch's own int4 kernel.

Decode is bound by the bytes of weights read per token; int4 reads 1/8 of fp32's. Each Linear's weight
is cut into groups of 32 along its input, and each group is stored as 4-bit codes plus a scale and a
zero (asymmetric: w = (code - 8) * scale + zero), packed by `_convert_weight_to_int4pack_for_cpu`
and multiplied by `_weight_int4pack_mm_for_cpu`. That kernel is fast only with bf16 inputs, so each
quantized layer rounds its input to bf16 and its output back to the serving dtype; everything between
the layers (norms, attention, the residual stream, the head) stays in the serving dtype. (llama.cpp,
on the same GGUF, rounds the activations harder: to 8-bit blocks, Q8_1, for each dot product.)

That grid is exactly GGUF's Q4_1 block (32 weights, w = d * q + m), so a base dequantized from a Q4_1
GGUF (like the packaged SmolLM2: its 210 Q4_1 matrices come back with error 0) is stored again without
loss; any other base loses what 4 bits per weight lose, and the load logs the largest relative error
of a weight row, so it is never silent. The output head stays as it is (`heads`): SmolLM2's GGUF has
it in Q8_0, which 4 bits would cut to a 10.8% row error.

Measured on the 124 held-out triage tickets (benchmarks/precision_accuracy.py --against int4): JSON
validity, intent and priority exactly fp32's, 121 answers byte-identical, the 3 others both ways.

LoRA stays unmerged on top (peft calls the quantized layer as its base layer): a fold into 4-bit
weights would not be exact, so AdapterRegistry does not fold when quantized.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger("kubetune.serve")
GROUP = 32
INNER_K_TILES = 2  # the CPU packing's tile parameter (2, 4 or 8; the kernel reads any)
# The kernel's fast path takes bf16 inputs: measured over SmolLM2's 210 matrices on 2 cores, batch 8:
# fp32 inputs 834 ms (a reference loop), bf16 inputs 19 ms, fp32 weights with F.linear 47 ms.
KERNEL_DTYPE = torch.bfloat16


class Int4Linear(torch.nn.Linear):
    """A Linear whose weight lives as packed int4 codes + per-group scale and zero.

    A subclass of nn.Linear so that peft wraps it like any Linear; `weight` is an empty tensor of the
    serving dtype (peft reads its dtype and device for the adapter's weights)."""

    packed: torch.Tensor
    scales_zeros: torch.Tensor

    def __init__(self, linear: torch.nn.Linear) -> None:
        torch.nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        packed, scales_zeros, self.error = pack_int4(weight)
        self.register_buffer("packed", packed)
        self.register_buffer("scales_zeros", scales_zeros.to(KERNEL_DTYPE), persistent=False)
        self.weight = torch.nn.Parameter(weight.new_empty(0), requires_grad=False)
        self.bias = linear.bias

    def _apply(self, fn: Any, recurse: bool = True) -> Int4Linear:
        """`model.to(...)` moves the scales like any buffer, but they stay in the kernel's dtype."""
        scales = self.scales_zeros
        super()._apply(fn, recurse)  # type: ignore[no-untyped-call]
        self.scales_zeros = fn(scales).to(KERNEL_DTYPE)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(KERNEL_DTYPE)
        out: torch.Tensor = torch.ops.aten._weight_int4pack_mm_for_cpu(
            flat, self.packed, GROUP, self.scales_zeros
        )
        out = out.to(x.dtype)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


def pack_int4(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(packed codes, scales_and_zeros [in/32, out, 2], largest relative error of a row)."""
    rows, cols = weight.shape
    w = weight.float().reshape(rows, cols // GROUP, GROUP)
    low, high = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
    scale = ((high - low) / 15).clamp(min=torch.finfo(torch.float32).tiny)
    codes = ((w - low) / scale).round().clamp(0, 15)
    restored = (codes * scale + low).reshape(rows, cols)
    norms = weight.float().norm(dim=1).clamp(min=1e-30)
    error = float(((restored - weight.float()).norm(dim=1) / norms).max())
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
        codes.to(torch.int32).reshape(rows, cols), INNER_K_TILES
    )
    zeros = low + 8 * scale
    scales_zeros = torch.cat([scale, zeros], dim=-1).transpose(0, 1).contiguous()
    return packed, scales_zeros, error


def quantizable(module: Any) -> bool:
    """What the CPU kernel takes: inputs in whole groups, outputs a multiple of 16."""
    if not isinstance(module, torch.nn.Linear):
        return False
    return module.in_features % GROUP == 0 and module.out_features % 16 == 0


def quantize_int4(model: torch.nn.Module, keep: tuple[str, ...] = ()) -> int:
    """Swap every Linear the kernel takes (`quantizable`) for an Int4Linear, except those under a
    module named in `keep` (the last part of its dotted name); returns how many. Call before any
    adapter is loaded (peft wraps what it finds)."""
    swapped, worst = 0, 0.0
    for path, parent in list(model.named_modules()):
        if set(path.split(".")) & set(keep):
            continue
        for name, child in list(parent.named_children()):
            if quantizable(child) and not isinstance(child, Int4Linear) and name not in keep:
                layer = Int4Linear(child)
                setattr(parent, name, layer)
                swapped, worst = swapped + 1, max(worst, layer.error)
    log.info("int4: %d linear layers quantized; largest relative error of a weight row %.2g", swapped, worst)
    return swapped


def heads(model: Any, task: str) -> tuple[str, ...]:
    """The modules int4 leaves in the serving dtype: a causal LM's output embeddings (the usual GPTQ /
    AWQ / GGUF choice: they set every logit), a classifier's head (peft stores it whole beside each
    adapter)."""
    if task == "sequence-classification":
        return ("classifier", "score")
    out = model.get_output_embeddings()
    return tuple(name.rsplit(".", 1)[-1] for name, m in model.named_modules() if m is out and name)
