"""Batched model calls, run on the model thread: many requests, many adapters, one forward pass.

Rows of different adapters share a batch through peft's mixed-batch routing (`adapter_names`), so
batching never changes which weights answer a request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from kubetune_trainer.models import mean_pool
from kubetune_trainer.serve.adapters import AdapterRegistry, Target
from kubetune_trainer.serve.errors import ServeError

Delta = Callable[[str], None]  # receives each new piece of text (thread-safe hand-off to the event loop)


@dataclass
class GenerationRow:
    """One prompt's generation state; filled in on the model thread."""

    target: Target
    prompt_ids: list[int]
    max_new_tokens: int
    stop: tuple[str, ...] = ()
    on_delta: Delta | None = None
    generated: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    error: ServeError | None = None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None


@dataclass(frozen=True)
class Sampling:
    """Rows batch together only when they sample alike; greedy when temperature is 0."""

    temperature: float = 0.0
    top_p: float = 1.0

    def generate_kwargs(self) -> dict[str, Any]:
        if self.temperature <= 0:
            return {"do_sample": False}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p}


class RowStreamer(BaseStreamer):
    """Receives each step's tokens for the whole batch and routes them to their rows.

    transformers' TextStreamer refuses batches; generate() itself calls put() with shape (batch,).
    """

    def __init__(self, rows: list[GenerationRow], tokenizer: Any) -> None:
        self.rows = rows
        self.tokenizer = tokenizer
        self.eos = set(_eos_ids(tokenizer))
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # the first call carries the prompts
            self.prompt_seen = True
            return
        for row, token in zip(self.rows, value.reshape(-1).tolist(), strict=True):
            if not row.done:
                self._advance(row, int(token))

    def _advance(self, row: GenerationRow, token: int) -> None:
        if token in self.eos:
            row.finish_reason = "stop"
            return
        row.generated.append(token)
        text = self.tokenizer.decode(row.generated, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
            text = text[: len(row.text)]
        hit = min(
            (i for i in (text.find(s, max(0, len(row.text) - len(s))) for s in row.stop) if i >= 0),
            default=-1,
        )
        if hit >= 0:
            text, row.finish_reason = text[:hit], "stop"
        elif len(row.generated) >= row.max_new_tokens:
            row.finish_reason = "length"
            text = self.tokenizer.decode(row.generated, skip_special_tokens=True)
        delta, row.text = text[len(row.text) :], text
        if delta and row.on_delta is not None:
            row.on_delta(delta)

    def end(self) -> None:
        for row in self.rows:
            if not row.done:
                row.finish_reason = "length"


class RowsDone(StoppingCriteria):
    """Per-row stop: a row ends at its own max_tokens or stop string, not at the batch's longest."""

    def __init__(self, rows: list[GenerationRow]) -> None:
        self.rows = rows

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **_: Any) -> torch.BoolTensor:
        return torch.tensor([r.done for r in self.rows], dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


def _eos_ids(tokenizer: Any) -> list[int]:
    ids = {tokenizer.eos_token_id}
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tokenizer.get_vocab() else None
    return [i for i in ids | {im_end} if i is not None]


def live_rows(registry: AdapterRegistry, rows: list[Any]) -> list[Any]:
    """Re-resolve each row's model on the model thread, where loads and unloads also run.

    A request queued for `name` while a hot swap replaced name@v1 by name@v2 is served by v2; one for
    an explicit version that was unloaded meanwhile fails alone, not its whole batch.
    """
    live = []
    for row in rows:
        try:
            row.target = registry.refresh(row.target)
            live.append(row)
        except ServeError as err:
            row.error = err
    return live


def generate_rows(registry: AdapterRegistry, rows: list[GenerationRow], sampling: Sampling) -> None:
    """Generate for every row in one batched generate(); results land in the rows."""
    rows = live_rows(registry, rows)
    if not rows:
        return
    tok = registry.tokenizer
    width = max(len(r.prompt_ids) for r in rows)
    pad = tok.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(r.prompt_ids)) + r.prompt_ids for r in rows])
    mask = torch.tensor([[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in rows])
    streamer = RowStreamer(rows, tok)
    with torch.inference_mode():
        registry.model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            max_new_tokens=max(r.max_new_tokens for r in rows),
            pad_token_id=pad,
            eos_token_id=_eos_ids(tok),
            streamer=streamer,
            stopping_criteria=StoppingCriteriaList([RowsDone(rows)]),
            **sampling.generate_kwargs(),
            **registry.adapter_kwargs([r.target for r in rows]),
        )
    streamer.end()


@dataclass
class ClassifyRow:
    target: Target
    text: str
    probabilities: list[float] = field(default_factory=list)
    embedding: np.ndarray | None = None  # mean-pooled last hidden state, for the drift monitor
    error: ServeError | None = None


def classify_rows(registry: AdapterRegistry, rows: list[ClassifyRow], max_tokens: int) -> None:
    """Softmax over the head of each row's adapter, in one forward pass; with monitoring on, the same
    pass also yields each row's mean-pooled embedding (as the trainer's reference statistics do)."""
    rows = live_rows(registry, rows)
    if not rows:
        return
    batch = registry.tokenizer(
        [r.text for r in rows], return_tensors="pt", padding=True, truncation=True, max_length=max_tokens
    )
    monitoring = registry.config.monitoring.enabled
    with torch.inference_mode():
        out = registry.model(
            **batch, output_hidden_states=monitoring, **registry.adapter_kwargs([r.target for r in rows])
        )
        embeddings = (
            mean_pool(out.hidden_states[-1].float(), batch["attention_mask"]).numpy() if monitoring else None
        )
    for i, (row, probs) in enumerate(
        zip(rows, torch.softmax(out.logits.float(), dim=-1).tolist(), strict=True)
    ):
        row.probabilities = probs
        row.embedding = embeddings[i] if embeddings is not None else None
