"""Batching: generation is continuously batched, classification is dynamically batched.

One model thread runs every model call (decode steps, classification batches, adapter loads and
unloads) in arrival order, so the model is never touched by two threads. Generation runs one
decode step per model-thread call (decode.RunningBatch): requests that arrive while a batch is
decoding join it at the next step, finished ones leave it, and an adapter load queued on the model
thread runs between two steps. An idle server still waits `batch_wait_ms` after the first request for
company. Classification rows arriving in the same window share one forward pass; they run between
decode steps. Rows of different adapters and different sampling settings share a batch.

transformers' ContinuousBatchingManager is not used: it cannot route a request to an adapter (see
decode.py for what was checked in transformers 5.24).
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
from kubetune_trainer.serve.decode import RunningBatch
from kubetune_trainer.serve.errors import ServeError
from kubetune_trainer.serve.inference import ClassifyRow, GenerationRow, Sampling, classify_rows

log = logging.getLogger("kubetune.serve")
T = TypeVar("T")


@dataclass
class _Pending:
    rows: list[GenerationRow] | list[ClassifyRow]
    generate: bool
    future: asyncio.Future[None]
    taken: int = 0  # classification: rows already given to a forward pass

    @property
    def done(self) -> bool:
        return all(getattr(r, "done", True) for r in self.rows)


class ModelWorker:
    """The one thread that touches the model; `call` runs a function there and awaits it."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kubetune-model")

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)


class Batcher:
    """Queue of pending requests and the loop that turns them into decode steps and batches."""

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
        self.running = RunningBatch(registry)
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._waiting: list[_Pending] = []  # generation requests not yet in the running batch
        self._decoding: list[_Pending] = []  # generation requests in the running batch
        self._classify: list[_Pending] = []
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
        for row in rows:
            row.sampling = sampling
        await self._submit(_Pending(rows, True, asyncio.get_running_loop().create_future()))

    async def classify(self, rows: list[ClassifyRow]) -> None:
        await self._submit(_Pending(rows, False, asyncio.get_running_loop().create_future()))

    async def _submit(self, pending: _Pending) -> None:
        await self._queue.put(pending)
        await pending.future

    async def _run(self) -> None:
        while True:
            if self._waiting or self._decoding or self._classify:
                self._drain()
            else:
                self._sort(await self._queue.get())
                await self._wait_for_company()
            if self._classify:
                await self._run_classify()
            if self._waiting or self._decoding:
                await self._step()

    def _sort(self, p: _Pending) -> None:
        (self._waiting if p.generate else self._classify).append(p)

    def _drain(self) -> None:
        while not self._queue.empty():
            self._sort(self._queue.get_nowait())

    async def _wait_for_company(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        while sum(len(p.rows) for p in (*self._waiting, *self._classify)) < self.max_batch:
            try:
                p = await asyncio.wait_for(self._queue.get(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                break
            self._sort(p)

    async def _step(self) -> None:
        """Admit waiting requests that fit, run one decode step, answer the requests that finished."""
        free = self.max_batch - self.running.size
        admitted: list[_Pending] = []
        while self._waiting and (not admitted or len(self._waiting[0].rows) <= free):
            if len(self._waiting[0].rows) > free and self.running.size:
                break  # a request wider than the free places waits for rows to leave
            p = self._waiting.pop(0)
            admitted.append(p)
            free -= len(p.rows)
        self._decoding += admitted
        new_rows = [row for p in admitted for row in p.rows]
        width = self.running.size + len(new_rows)
        try:
            await self.worker.call(self.running.step, new_rows)
        except Exception as err:  # one bad step must not stop the loop; the endpoints answer 500
            log.exception("decode step over %d rows failed", self.running.size + len(new_rows))
            await self.worker.call(self.running.abandon, err)
            for p in self._decoding:
                for row in p.rows:
                    row.fail(err)  # type: ignore[union-attr]
        self.batch_sizes = [*self.batch_sizes[-999:], width]
        finished = [p for p in self._decoding if p.done]
        self._decoding = [p for p in self._decoding if not p.done]
        self._answer(finished, None)

    async def _run_classify(self) -> None:
        """One forward pass of up to max_batch rows, taken in turn from each waiting request, so one
        request with many inputs does not hold back the others (new requests join between passes, and
        decode steps run between them too). A request is answered once all its rows have run; rows of
        a request whose client left are skipped."""
        chunk = take_turns(self._classify, self.max_batch)
        if chunk:
            self.batch_sizes = [*self.batch_sizes[-999:], len(chunk)]
        try:
            if chunk:
                await self.worker.call(classify_rows, self.registry, chunk, self.max_input_tokens)
        except Exception as err:  # one bad batch must not stop the loop; the endpoints answer 500
            if not isinstance(err, ServeError):
                log.exception("batch of %d rows failed", len(chunk))
            ran = {id(r) for r in chunk}
            failed = [p for p in self._classify if any(id(r) in ran for r in p.rows)]
            self._classify = [p for p in self._classify if p not in failed]
            self._answer(failed, err)
            return
        finished = [p for p in self._classify if p.taken == len(p.rows)]
        self._classify = [p for p in self._classify if p.taken < len(p.rows)]
        self._answer(finished, None)

    def _answer(self, batch: list[_Pending], err: Exception | None) -> None:
        for p in batch:
            if not p.future.done():
                if err is None:
                    p.future.set_result(None)
                else:
                    p.future.set_exception(err)
            self._queue.task_done()


def take_turns(pending: list[_Pending], size: int) -> list[ClassifyRow]:
    """Up to `size` rows, one from each request in turn (oldest first); rows already done (their
    client left) are passed over without taking a place."""
    chunk: list[ClassifyRow] = []
    while len(chunk) < size and any(p.taken < len(p.rows) for p in pending):
        for p in pending:
            while p.taken < len(p.rows) and len(chunk) < size:
                row = p.rows[p.taken]
                p.taken += 1
                if not getattr(row, "done", False):
                    chunk.append(row)  # type: ignore[arg-type]
                    break
    return chunk
