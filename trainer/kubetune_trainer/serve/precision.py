"""`serving.precision` -> the dtype the server keeps its weights (and LoRA adapters) in.

Decode on CPU reads every weight once per step, so halving the bytes (bf16) is the cheap lever; it
only pays where the CPU has native bf16 dot products (AVX-512 BF16 or AMX), else oneDNN emulates
them and bf16 is slower than fp32. Measured in benchmarks/SERVE_RESULTS.md.
"""

from __future__ import annotations

import torch

from kubetune.api.adapterdeployment import Precision


def native_bf16(device: str = "cpu") -> bool:
    """True on CUDA and on CPUs with bf16 instructions (torch's own checks)."""
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def serving_dtype(
    precision: Precision, device: str = "cpu", task: str = "sequence-classification"
) -> torch.dtype:
    """fp32 / bf16 as asked; auto -> bf16 where native, except a causal LM on a CPU: fp32.

    Measured (benchmarks/precision_accuracy.py, SERVE_RESULTS.md "Precision"): the MiniLM classifier
    in bf16 changed 0 of 240 predictions, but the SmolLM2 triage model's greedy answers in bf16 moved
    priority to "low" in 14 of 124 tickets, all one way (a bias, not noise; an fp32 LoRA on a bf16 base
    did the same). Until a triage adapter measures clean in bf16, auto keeps causal LMs on CPUs in
    fp32 (about 1.4x slower decode there); on CUDA bf16 is how LLMs are served (vLLM's auto does the same).
    """
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp32" or not native_bf16(device):
        return torch.float32
    if task == "causal-lm" and not device.startswith("cuda"):
        return torch.float32
    return torch.bfloat16
