"""`serving.precision: auto` picks bf16 only where it is native and measured harmless for the task."""

from __future__ import annotations

import pytest
import torch
from kubetune_trainer.serve import precision
from kubetune_trainer.serve.precision import serving_dtype


@pytest.mark.parametrize(
    ("native", "asked", "device", "task", "want"),
    [
        (True, "auto", "cpu", "sequence-classification", torch.bfloat16),
        (True, "auto", "cpu", "causal-lm", torch.float32),  # bf16 biased the triage answers on CPU
        (True, "auto", "cuda", "causal-lm", torch.bfloat16),
        (False, "auto", "cpu", "sequence-classification", torch.float32),  # emulated bf16 is slower
        (False, "bf16", "cpu", "causal-lm", torch.bfloat16),  # asked for: given
        (True, "fp32", "cuda", "sequence-classification", torch.float32),
    ],
)
def test_auto_precision_policy(
    monkeypatch: pytest.MonkeyPatch, native: bool, asked: str, device: str, task: str, want: torch.dtype
) -> None:
    monkeypatch.setattr(precision, "native_bf16", lambda device="cpu": native)
    assert serving_dtype(asked, device, task) == want  # type: ignore[arg-type]
