"""A coalescing work queue of "reconcile this object" requests, as controller-runtime's workqueue.

Watch events of an object and of its children, trainer progress and the slow resync all ask for one
thing: reconcile object K. Kopf runs handlers per *event* of the object that changed, which for an
owner means nothing when only its Job or Pod changed, so requests go through this queue instead:

- one reconcile per key at a time; requests that arrive while it runs collapse into one more run;
- at most ``concurrency`` reconciles at once over all keys (a burst of 1,000 jobs does not open
  1,000 concurrent requests against the API server);
- a failed run is retried: after the delay a ``kopf.TemporaryError`` names (429 Retry-After, a lost
  connection), else with exponential backoff per key; ``kopf.PermanentError`` is logged, not retried;
- a run may ask to be requeued after a delay (``requeue_after``), e.g. a canary step's pause;
- ``close()`` cancels pending timers and waits for running reconciles, so a stop logs no error.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Awaitable, Callable, Hashable

import kopf

Worker = Callable[[Hashable], Awaitable[float | None]]  # returns: requeue after N seconds, or None

MAX_BACKOFF = 60.0


class WorkQueue:
    def __init__(self, worker: Worker, concurrency: int, logger: logging.Logger) -> None:
        self._worker = worker
        self._slots = asyncio.Semaphore(concurrency)
        self._log = logger
        self._running: dict[Hashable, asyncio.Task[None]] = {}
        self._dirty: set[Hashable] = set()
        self._timers: dict[Hashable, asyncio.TimerHandle] = {}
        self._failures: dict[Hashable, int] = {}
        self._closed = False
        # The context tasks run in (Kopf's event posting reads context variables set for handlers).
        self.context: contextvars.Context | None = None

    def kick(self, key: Hashable, delay: float = 0.0) -> None:
        """Ask for a reconcile of ``key``: now (coalesced with a running one), or after ``delay`` s."""
        if self._closed:
            return
        if delay > 0:
            timer = self._timers.get(key)
            due = asyncio.get_running_loop().time() + delay
            if timer is not None and timer.when() <= due:
                return  # an earlier wake-up is already set
            if timer is not None:
                timer.cancel()
            loop = asyncio.get_running_loop()
            self._timers[key] = loop.call_at(due, self._fire, key, context=self.context)
            return
        if key in self._running:
            self._dirty.add(key)
            return
        self._running[key] = asyncio.create_task(
            self._run(key), name=f"reconcile {key}", context=self.context
        )

    def _fire(self, key: Hashable) -> None:
        self._timers.pop(key, None)
        self.kick(key)

    def forget(self, key: Hashable) -> None:
        """The object is gone: drop its timers and backoff (a running reconcile finishes)."""
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        self._failures.pop(key, None)
        self._dirty.discard(key)

    @property
    def pending(self) -> int:
        return len(self._running) + len(self._timers)

    async def _run(self, key: Hashable) -> None:
        try:
            while True:
                self._dirty.discard(key)
                requeue = await self._once(key)
                if requeue is not None:
                    self.kick(key, requeue)
                if key not in self._dirty or self._closed:
                    return
        finally:
            self._running.pop(key, None)

    async def _once(self, key: Hashable) -> float | None:
        async with self._slots:
            if self._closed:
                return None
            try:
                requeue = await self._worker(key)
            except asyncio.CancelledError:
                raise
            except kopf.PermanentError as err:
                self._log.error("reconcile of %s failed permanently: %s", key, err)
                return None
            except kopf.TemporaryError as err:
                if self._closed:
                    return None
                self._log.info("reconcile of %s retried in %g s: %s", key, err.delay or 1.0, err)
                return float(err.delay or 1.0)
            except Exception:
                if self._closed:
                    return None
                failures = self._failures.get(key, 0) + 1
                self._failures[key] = failures
                delay = min(MAX_BACKOFF, 2.0 ** (failures - 1))
                self._log.exception("reconcile %s failed (%d in a row), again in %gs", key, failures, delay)
                return delay
            self._failures.pop(key, None)
            return requeue

    async def close(self, grace: float = 5.0) -> None:
        """No new runs; running reconciles get ``grace`` seconds to finish, then are cancelled."""
        self._closed = True
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        tasks = list(self._running.values())
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
