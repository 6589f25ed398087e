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


def serving_dtype(precision: Precision, device: str = "cpu") -> torch.dtype:
    """auto -> bf16 where native, else fp32; fp32 / bf16 as asked."""
    if precision == "bf16" or (precision == "auto" and native_bf16(device)):
        return torch.bfloat16
    return torch.float32
