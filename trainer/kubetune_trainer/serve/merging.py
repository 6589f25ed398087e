"""The single-adapter fast path: while every row of a step is one adapter's, its LoRA is folded into
the base weights (peft `merge_adapter`), so a token costs the base model's matmuls only.

Measured on SmolLM2-135M + a q/v r=4 adapter, fp32, 2 CPU cores, batch 8 (issue 12): a decode step
124 -> 108 ms, the 8 x 128-token prefill 2.9 -> 2.2 s; peft's mixed-batch routing (`adapter_names`)
indexes every adapted layer's input per adapter and runs the LoRA matmuls beside the base ones.

Unfolding (a base-model row or a second adapter arrives) takes the delta out again. In fp32, peft's
subtraction leaves the base within rounding of where it was; in bf16/fp16 it would not (the merged
weight was rounded to 8/11 bits), so there the adapted layers' base weights are copied before the
fold and copied back after it, at the cost of that copy's memory while merged.

Model thread only (see batching.py), like everything that touches the weights.
"""

from __future__ import annotations

from typing import Any, cast

import torch


class Folded:
    """One adapter folded into `model`'s base weights until `unfold()`."""

    def __init__(self, model: Any, key: str, dtype: torch.dtype) -> None:
        self.model, self.key = model, key
        self._saved: list[tuple[torch.Tensor, torch.Tensor]] = []
        if dtype != torch.float32:
            self._saved = [(w, w.detach().clone()) for w in _adapted_weights(model, key)]
        model.set_adapter(key)  # also picks the adapter's own copy of a classifier head
        model.merge_adapter([key])

    def unfold(self) -> None:
        self.model.unmerge_adapter()
        with torch.no_grad():
            for weight, original in self._saved:
                weight.copy_(original)
        self._saved = []


def _adapted_weights(model: Any, key: str) -> list[torch.Tensor]:
    """The base weight under every LoRA layer that `key` adapts."""
    from peft.tuners.lora import LoraLayer

    return [
        cast(torch.Tensor, m.get_base_layer().weight)
        for m in model.modules()
        if isinstance(m, LoraLayer) and (key in m.lora_A or key in m.lora_embedding_A)
    ]
