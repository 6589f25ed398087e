"""Dynamic batching: requests that arrive within a small window share one forward pass.

One model thread runs every model call (batches, adapter loads, unloads) in arrival order, so the
model is never touched by two threads. The batcher collects rows for at most `batch_wait_ms` after the
first one (or until `max_batch_size` rows), groups them by kind and sampling settings, and runs each
group as one call; rows of different adapters share a group (peft mixed batches).

Why not transformers' continuous batching (`generate_batch` / ContinuousBatchingManager, installed
5.x)? It runs on CPU with a PeftModel, but it applies only the *active* adapter to every request:
`add_request` has no adapter argument and its forward never passes peft's `adapter_names`. Per-request
adapters would need `set_adapter` between requests, racing its background thread. Measured once on
this machine (SmolLM2, 2 prompts x 8 tokens): it worked with one adapter. Revisit when it can route
requests to adapters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from kubetune_trainer.serve.adapters import AdapterRegistry
from kubetune_trainer.serve.errors import ServeError
from kubetune_trainer.serve.inference import (
    ClassifyRow,
    GenerationRow,
    Sampling,
    classify_rows,
    generate_rows,
)

log = logging.getLogger("kubetune.serve")
T = TypeVar("T")


@dataclass
class _Pending:
    rows: list[GenerationRow] | list[ClassifyRow]
    sampling: Sampling | None  # None: classification
    future: asyncio.Future[None]

    @property
    def group(self) -> tuple[str, Sampling | None]:
        return ("classify" if self.sampling is None else "generate", self.sampling)


class ModelWorker:
    """The one thread that touches the model; `call` runs a function there and awaits it."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kubetune-model")

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)


class Batcher:
    """Queue of pending requests and the loop that turns them into batches."""

    def __init__(
        self,
        registry: AdapterRegistry,
        worker: ModelWorker,
        max_batch: int,
        wait_ms: float,
        max_input_tokens: int,
    ) -> None:
        self.registry = registry
        self.worker = worker
        self.max_batch = max_batch
        self.wait_s = wait_ms / 1000
        self.max_input_tokens = max_input_tokens
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.batch_sizes: list[int] = []  # recent batch sizes, for tests and the benchmark
        self.closing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="kubetune-batcher")

    async def stop(self) -> None:
        """Finish everything queued, then stop (the SIGTERM drain calls this after HTTP work is done)."""
        await self._queue.join()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def generate(self, rows: list[GenerationRow], sampling: Sampling) -> None:
        await self._submit(_Pending(rows, sampling, asyncio.get_running_loop().create_future()))

    async def classify(self, rows: list[ClassifyRow]) -> None:
        await self._submit(_Pending(rows, None, asyncio.get_running_loop().create_future()))

    async def _submit(self, pending: _Pending) -> None:
        await self._queue.put(pending)
        await pending.future

    async def _run(self) -> None:
        carry: list[_Pending] = []
        while True:
            first = carry.pop(0) if carry else await self._queue.get()
            batch, carry = await self._collect(first, carry)
            try:
                await self._execute(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _collect(self, first: _Pending, carry: list[_Pending]) -> tuple[list[_Pending], list[_Pending]]:
        """`first` plus compatible requests arriving within the wait window; the rest carry over."""
        batch, rest = [first], []
        for p in carry:
            (batch if p.group == first.group and self._fits(batch, p) else rest).append(p)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        while sum(len(p.rows) for p in batch) < self.max_batch:
            try:
                p = await asyncio.wait_for(self._queue.get(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                break
            (batch if p.group == first.group and self._fits(batch, p) else rest).append(p)
        return batch, rest

    def _fits(self, batch: list[_Pending], p: _Pending) -> bool:
        return sum(len(b.rows) for b in batch) + len(p.rows) <= self.max_batch

    async def _execute(self, batch: list[_Pending]) -> None:
        rows = [row for p in batch for row in p.rows]
        self.batch_sizes = [*self.batch_sizes[-999:], len(rows)]
        try:
            if batch[0].sampling is None:
                for i in range(0, len(rows), self.max_batch):  # one request may carry many inputs
                    chunk = rows[i : i + self.max_batch]
                    await self.worker.call(classify_rows, self.registry, chunk, self.max_input_tokens)
            else:
                await self.worker.call(generate_rows, self.registry, rows, batch[0].sampling)
        except ServeError as err:
            self._fail(batch, err)
        except Exception as err:  # one bad batch must not stop the loop; the endpoints answer 500
            log.exception("batch of %d rows failed", len(rows))
            self._fail(batch, err)
        else:
            for p in batch:
                if not p.future.done():
                    p.future.set_result(None)

    @staticmethod
    def _fail(batch: list[_Pending], err: Exception) -> None:
        for p in batch:
            if not p.future.done():
                p.future.set_exception(err)
