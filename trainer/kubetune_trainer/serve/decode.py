"""Continuous batching: one decode step at a time over a running batch that rows join and leave.

Why our own step loop and not transformers' ContinuousBatchingManager (5.24, re-read for issue 12):
its `add_request` takes token ids, max_new_tokens, eos and logits-processor kwargs but no adapter, and
its model runner never passes peft's `adapter_names`, so every request would be answered by the
*active* adapter. Routing one adapter per row is the point of this server, so the loop is ours:

* the running batch is left-padded: one DynamicCache (batch, heads, T, dim), a 2D attention mask
  (batch, T) with 0 over each row's padding, and per-row position ids = real tokens seen so far
  (the same rule generate() uses: cumsum(mask) - 1), so a row's numbers do not depend on its padding;
* new rows are prefilled together (their own left-padded batch, `logits_to_keep=1`), then their KV is
  merged into the running cache by left-padding the shorter of the two to the longer length;
* each step feeds every row its last token, with `adapter_names` routing each row to its adapter;
* finished or cancelled rows leave after the step (batch index select), and mask columns no row
  needs any more are cut from the left.

Everything here runs on the server's single model thread (batching.ModelWorker).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache

from kubetune_trainer.serve.adapters import AdapterRegistry
from kubetune_trainer.serve.closed_answers import answer_closed, is_closed
from kubetune_trainer.serve.inference import (
    GenerationRow,
    advance,
    eos_ids,
    live_rows,
    next_tokens,
    token_logprobs,
)


class RunningBatch:
    """The rows decoding now, their KV cache and attention mask."""

    def __init__(self, registry: AdapterRegistry) -> None:
        self.registry = registry
        self.rows: list[GenerationRow] = []
        self.cache: DynamicCache | None = None
        self.mask = torch.zeros(0, 0, dtype=torch.long)
        self.last = torch.zeros(0, 1, dtype=torch.long)  # each row's newest token, fed next step

    @property
    def size(self) -> int:
        return len(self.rows)

    def step(self, new_rows: list[GenerationRow]) -> None:
        """Admit `new_rows` (prefill + first token), then one decode step for the rows that were
        already running. Rows that finish leave the batch at the end of the step."""
        self._drop_finished()  # rows cancelled since the last step
        if self.size:
            self._decode()
        admitted = live_rows(self.registry, new_rows)
        answer_closed(self.registry, [r for r in admitted if is_closed(r)])  # closed_answers.py
        admitted = [r for r in admitted if not is_closed(r)]
        if admitted:
            self._admit(admitted)
        self._drop_finished()

    def _forward(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: DynamicCache,
        rows: list[GenerationRow],
    ) -> torch.Tensor:
        with torch.inference_mode():
            out = self.registry.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
                **self.registry.route([r.target for r in rows]),
            )
        return out.logits[:, -1, :].float()

    def _admit(self, rows: list[GenerationRow]) -> None:
        width = max(len(r.prompt_ids) for r in rows)
        pad = self.registry.tokenizer.pad_token_id or 0
        ids = torch.tensor([[pad] * (width - len(r.prompt_ids)) + r.prompt_ids for r in rows])
        mask = torch.tensor([[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in rows])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        logits = self._forward(ids, mask, positions, cache, rows)
        first = self._emit(rows, logits)
        self._merge(rows, cache, mask, first)

    def _decode(self) -> None:
        assert self.cache is not None
        self.mask = torch.cat([self.mask, torch.ones(self.size, 1, dtype=torch.long)], dim=1)
        positions = self.mask.sum(-1, keepdim=True) - 1
        logits = self._forward(self.last, self.mask, positions, self.cache, self.rows)
        self.last = self._emit(self.rows, logits)

    def _emit(self, rows: list[GenerationRow], logits: torch.Tensor) -> torch.Tensor:
        tokens = next_tokens(logits, [r.sampling for r in rows])
        tok = self.registry.tokenizer
        eos = set(eos_ids(tok))
        chosen = [int(t) for t in tokens.tolist()]
        asked = [i for i, r in enumerate(rows) if r.top_logprobs is not None and not r.done]
        if asked:  # only rows that asked pay for the softmax and decoding
            found = token_logprobs(
                logits[asked], [chosen[i] for i in asked], [rows[i].top_logprobs or 0 for i in asked], tok
            )
            for i, entry in zip(asked, found, strict=True):
                if chosen[i] not in eos:  # as `generated`: the end-of-turn token is not part of the answer
                    rows[i].logprobs.append(entry)
        for row, token in zip(rows, chosen, strict=True):
            if not row.done:
                advance(row, token, tok, eos)
        return tokens.reshape(-1, 1)

    def _merge(
        self, rows: list[GenerationRow], cache: DynamicCache, mask: torch.Tensor, last: torch.Tensor
    ) -> None:
        for row in rows:
            self.registry.pin(row.target)
        if self.cache is None or not self.rows:
            self.rows, self.cache, self.mask, self.last = list(rows), cache, mask, last
            return
        length = max(self.mask.shape[1], mask.shape[1])
        for old, new in zip(_layers(self.cache), _layers(cache), strict=True):
            old.keys = torch.cat([_left_pad(old.keys, length, 2), _left_pad(new.keys, length, 2)])
            old.values = torch.cat([_left_pad(old.values, length, 2), _left_pad(new.values, length, 2)])
        self.mask = torch.cat([_left_pad(self.mask, length, 1), _left_pad(mask, length, 1)])
        self.rows += rows
        self.last = torch.cat([self.last, last])

    def _drop_finished(self) -> None:
        keep = [i for i, r in enumerate(self.rows) if not r.done]
        if len(keep) == self.size:
            return
        for row in self.rows:
            if row.done:
                self.registry.release(row.target)
        if not keep:
            self.rows, self.cache = [], None
            self.mask, self.last = self.mask[:0, :0], self.last[:0]
            return
        index = torch.tensor(keep)
        # Columns that are padding for every remaining row are dead weight in each step's attention.
        start = int((self.mask[index].sum(0) > 0).nonzero()[0])
        assert self.cache is not None
        for layer in _layers(self.cache):
            layer.keys = layer.keys[index, :, start:]
            layer.values = layer.values[index, :, start:]
        self.mask = self.mask[index, start:]
        self.last = self.last[index]
        self.rows = [self.rows[i] for i in keep]

    def abandon(self, error: Exception) -> None:
        """A step failed: every running row fails with it and the batch starts empty."""
        for row in self.rows:
            row.fail(error)
            self.registry.release(row.target)
        self.rows, self.cache = [], None


def _layers(cache: DynamicCache) -> list[Any]:
    """Each layer's DynamicLayer (.keys / .values: batch, heads, length, dim)."""
    return list(cache.layers)


def _left_pad(t: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    """Zeros on the left of `dim` up to `length` (mask 0 there, so the zero keys are never attended)."""
    missing = length - t.shape[dim]
    if missing == 0:
        return t
    shape: list[Any] = list(t.shape)
    shape[dim] = missing
    return torch.cat([torch.zeros(shape, dtype=t.dtype), t], dim=dim)
