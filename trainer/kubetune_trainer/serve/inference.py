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

from kubetune_trainer.models import mean_pool
from kubetune_trainer.serve.adapters import AdapterRegistry, Target
from kubetune_trainer.serve.answer_confidence import TokenLogprob
from kubetune_trainer.serve.errors import ServeError

Delta = Callable[[str], None]  # receives each new piece of text (thread-safe hand-off to the event loop)


@dataclass(frozen=True)
class Sampling:
    """A row's sampling settings; greedy when temperature is 0. Rows sampling differently share a
    batch (each row's next token is chosen from its own logits)."""

    temperature: float = 0.0
    top_p: float = 1.0


@dataclass
class GenerationRow:
    """One prompt's generation state; filled in on the model thread.

    Cancelling: `cancel()` (from any thread) marks the row finished with reason "cancelled"; the
    running batch drops it after the step in progress and a row still queued never starts.
    """

    target: Target
    prompt_ids: list[int]
    max_new_tokens: int
    stop: tuple[str, ...] = ()
    on_delta: Delta | None = None
    sampling: Sampling = Sampling()
    top_logprobs: int | None = None  # None: no logprobs asked for; else alternatives per token
    generated: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)  # one per generated token, if asked
    text: str = ""
    finish_reason: str | None = None
    error: Exception | None = None
    heads_answer: Any = None  # decoder_heads.HeadsAnswer, when the adapter answered with its heads

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def cancelled(self) -> bool:
        return self.finish_reason == "cancelled"

    def cancel(self) -> None:
        if self.finish_reason is None:
            self.finish_reason = "cancelled"

    def fail(self, error: Exception) -> None:
        self.error = error
        self.finish_reason = self.finish_reason or "error"


def next_tokens(logits: torch.Tensor, samplings: list[Sampling]) -> torch.Tensor:
    """One token per row of (rows, vocab) logits: argmax for greedy rows, else temperature + top-p."""
    tokens = logits.argmax(-1)
    for i, s in enumerate(samplings):
        if s.temperature > 0:
            probs = torch.softmax(logits[i] / s.temperature, dim=-1)
            ordered, index = probs.sort(descending=True)
            keep = ordered.cumsum(-1) - ordered < s.top_p  # the smallest prefix reaching top_p
            ordered = ordered * keep
            tokens[i] = index[torch.multinomial(ordered / ordered.sum(), 1)]
    return tokens


def advance(row: GenerationRow, token: int, tokenizer: Any, eos: set[int]) -> None:
    """Append one generated token: end at eos, a stop string or max_new_tokens; stream the new text."""
    if token in eos:
        row.finish_reason = "stop"
        return
    row.generated.append(token)
    text = tokenizer.decode(row.generated, skip_special_tokens=True)
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
        text = tokenizer.decode(row.generated, skip_special_tokens=True)
    delta, row.text = text[len(row.text) :], text
    if delta and row.on_delta is not None:
        row.on_delta(delta)


def token_logprobs(
    logits: torch.Tensor, tokens: list[int], counts: list[int], tokenizer: Any
) -> list[TokenLogprob]:
    """The chosen token's logprob and the `count` most likely tokens of each row, from the model's raw
    logits (as vLLM's default logprobs mode, before temperature), each token decoded on its own."""
    logp = torch.log_softmax(logits, dim=-1)
    out = []
    for row, (token, count) in enumerate(zip(tokens, counts, strict=True)):
        values, ids = logp[row].topk(count) if count else (torch.zeros(0), torch.zeros(0))
        top = tuple((tokenizer.decode([int(i)]), float(v)) for v, i in zip(values, ids, strict=True))
        out.append(TokenLogprob(tokenizer.decode([token]), float(logp[row, token]), top))
    return out


def eos_ids(tokenizer: Any) -> list[int]:
    ids = {tokenizer.eos_token_id}
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tokenizer.get_vocab() else None
    return [i for i in ids | {im_end} if i is not None]


def live_rows(registry: AdapterRegistry, rows: list[Any]) -> list[Any]:
    """Re-resolve each row's model on the model thread, where loads and unloads also run; rows
    already finished (cancelled while queued) are skipped.

    A request queued for `name` while a hot swap replaced name@v1 by name@v2 is served by v2; one for
    an explicit version that was unloaded meanwhile fails alone, not its whole batch.
    """
    live = []
    for row in rows:
        if getattr(row, "done", False):
            continue
        try:
            row.target = registry.refresh(row.target)
            live.append(row)
        except ServeError as err:
            row.error = err
    return live


@dataclass
class ClassifyRow:
    target: Target
    text: str
    probabilities: list[float] = field(default_factory=list)
    embedding: np.ndarray | None = None  # mean-pooled last hidden state, for the drift monitor
    error: ServeError | None = None
    finish_reason: str | None = None  # "cancelled" (admission.cancel_rows): the client left; skip it

    @property
    def done(self) -> bool:
        return self.finish_reason is not None


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
            **batch, output_hidden_states=monitoring, **registry.route([r.target for r in rows])
        )
        embeddings = (
            mean_pool(out.hidden_states[-1].float(), batch["attention_mask"]).numpy() if monitoring else None
        )
    # Each adapter's calibration temperature (temperature.py): the argmax stays, the confidence is honest.
    temperatures = torch.tensor([[r.target.adapter.temperature if r.target.adapter else 1.0] for r in rows])
    for i, (row, probs) in enumerate(
        zip(rows, torch.softmax(out.logits.float() / temperatures, dim=-1).tolist(), strict=True)
    ):
        row.probabilities = probs
        row.embedding = embeddings[i] if embeddings is not None else None
