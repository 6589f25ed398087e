"""Training progress pushed from the trainer's log: one followed log stream per running training pod.

Trainer pods have no API rights (no token), so their progress reaches us only through stdout. Reading
a log tail on a timer costs one request per running job per tick, whether or not it logged anything;
a followed log (``follow=true``, what ``kubectl logs -f`` does) costs nothing while the trainer is
quiet and delivers each line as it is written. Each new step line updates the job's progress here;
the job is requeued for a status patch at most once per ``min_interval`` seconds (a trainer logging
every step must not patch the FineTuneJob every step).

A stream that ends while the pod still runs (the API server's request timeout, a kubelet restart) or
cannot be opened (the container has not started) is reopened, the tail re-read so nothing is missed:
at once after a stream that held for a while, else with backoff (1 s doubling to ``max_backoff``).
At most ``max_streams`` are open at once; beyond that, jobs wait for a free stream (their status
shows the last progress).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from kubetune_operator.kube import Kube
from kubetune_operator.progress import Progress, advance

STEADY = 30.0  # seconds a stream must have held for its end to count as normal


def _instant(stamp: str) -> tuple[str, int]:
    """An RFC 3339 timestamp as a sortable value (the kubelet trims trailing zeros of the fraction,
    so the strings themselves do not sort)."""
    base, _, fraction = stamp.rstrip("Z").partition(".")
    digits = (fraction + "000000000")[:9]
    return base, int(digits) if digits.isdigit() else 0


@dataclass
class _Follower:
    pod: str
    task: asyncio.Task[None]


class ProgressFollowers:
    def __init__(
        self,
        kube: Kube,
        container: str,
        tail_lines: int,
        on_progress: Callable[[Hashable, float], None],
        *,
        min_interval: float,
        max_streams: int,
        max_backoff: float,
        logger: logging.Logger,
    ) -> None:
        self._kube = kube
        self._container = container
        self._tail = tail_lines
        self._on_progress = on_progress
        self._min_interval = min_interval
        self._max_backoff = max_backoff
        self._slots = asyncio.Semaphore(max_streams)
        self._log = logger
        self._followers: dict[Hashable, _Follower] = {}
        self._progress: dict[Hashable, Progress] = {}
        self._notified: dict[Hashable, float] = {}

    def progress(self, key: Hashable) -> Progress:
        return self._progress.get(key, Progress())

    def follow(self, key: Hashable, namespace: str, pod: str | None) -> None:
        """Follow ``pod``'s trainer log for ``key`` (None: follow nothing); idempotent."""
        current = self._followers.get(key)
        if current is not None and current.pod == pod:
            return
        if current is not None:
            current.task.cancel()
            del self._followers[key]
        if pod is not None:
            task = asyncio.create_task(self._follow(key, namespace, pod), name=f"log {namespace}/{pod}")
            self._followers[key] = _Follower(pod, task)

    def forget(self, key: Hashable) -> None:
        self.follow(key, "", None)
        self._progress.pop(key, None)
        self._notified.pop(key, None)

    @property
    def streams(self) -> int:
        return len(self._followers)

    async def _follow(self, key: Hashable, namespace: str, pod: str) -> None:
        backoff = 1.0
        # The newest line's timestamp and how many lines carried it: a reopened stream re-reads its
        # tail, and skips what was read before (progress must not step back and forth).
        seen: tuple[str, int] = ("", -1)
        seen_lines = 0
        while True:
            opened = time.monotonic()
            at_seen = 0
            try:
                async with self._slots:
                    async for line in self._kube.follow_log(namespace, pod, self._container, self._tail):
                        stamp, _, text = line.partition(" ")
                        when = _instant(stamp)
                        if when < seen:
                            continue
                        if when == seen:
                            at_seen += 1
                            if at_seen <= seen_lines:
                                continue
                            seen_lines = at_seen
                        else:
                            seen, seen_lines, at_seen = when, 1, 1
                        self._line(key, text)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # any failure: reopen later, never crash
                self._log.debug("log of %s/%s: %s", namespace, pod, err)
            # A stream that held for a while ended normally (a timeout on the way): reopen at once.
            # One that ends or fails at once again and again backs off, up to max_backoff.
            lasted = time.monotonic() - opened
            backoff = 1.0 if lasted > STEADY else min(self._max_backoff, backoff * 2)
            self._log.debug("log of %s/%s ended after %.0f s; again in %g s", namespace, pod, lasted, backoff)
            await asyncio.sleep(backoff)

    def _line(self, key: Hashable, line: str) -> None:
        before = self._progress.get(key, Progress())
        after = advance(before, line)
        if after == before:
            return
        self._progress[key] = after
        now = time.monotonic()
        wait = self._notified.get(key, 0.0) + self._min_interval - now
        if wait > 0 and self._notified.get(key, 0.0) > now:
            return  # a requeue is already due at the end of this interval
        wait = max(wait, 0.0)
        self._notified[key] = now + wait
        self._on_progress(key, wait)

    async def close(self) -> None:
        tasks = [f.task for f in self._followers.values()]
        self._followers.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
