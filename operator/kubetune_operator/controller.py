"""The operator's controller: what Kopf's watch events turn into, and the one place that writes status.

Kopf watches FineTuneJobs, AdapterDeployments and (server-side filtered by our labels) the Jobs,
validation and training Pods and Deployments we own; it keeps the children in indices (watches.py)
and calls our event handlers, which only ask for a reconcile of the *owner* here. Each kind has a coalescing
work queue (workqueue.py): one reconcile per object at a time, on the newest copy of the object, its
children from the indices, then one status patch. The object itself is the newest of its watch events
and our own patches' answers (no GET per reconcile). Nothing polls on a timer except a slow safety
resync, spread evenly over ``resyncSeconds`` across the live FineTuneJobs; an AdapterDeployment is
requeued every ``adapterResyncSeconds`` only while something of it moves with the clock (a canary
step's pause, Prometheus triggers, a retrain to judge), else once per ``resyncSeconds``. Children we
do not watch (a trainer ServiceAccount, an API group) are re-read at most once per kube.KNOWN_TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import random
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from kubetune.api.finetunejob import TERMINAL_PHASES
from kubetune_operator.builders.meta import LABEL_ADAPTERDEPLOYMENT
from kubetune_operator.builders.training import TRAINER_CONTAINER
from kubetune_operator.handlers import adapterdeployment, finetunejob
from kubetune_operator.handlers.outcome import Outcome
from kubetune_operator.kube import Kube, collection_path
from kubetune_operator.logfollow import ProgressFollowers
from kubetune_operator.settings import OperatorSettings
from kubetune_operator.workqueue import WorkQueue

log = logging.getLogger("kubetune.controller")
Key = tuple[str, str]  # (namespace, name)
FTJ = ("kubetune.dev/v1alpha1", "FineTuneJob")
ADEP = ("kubetune.dev/v1alpha1", "AdapterDeployment")


@dataclass(frozen=True)
class Children:
    """A FineTuneJob's Jobs and their Pods (validation and training), from the watch cache (Kopf indices)."""

    jobs: list[dict[str, Any]] = field(default_factory=list)
    pods: list[dict[str, Any]] = field(default_factory=list)


def _path(kind: tuple[str, str], key: Key) -> str:
    """The API path of the custom resource ``kind`` (apiVersion, kind) named by ``key``."""
    return f"{collection_path(kind[0], kind[1], key[0])}/{key[1]}"


def _timed(body: dict[str, Any]) -> bool:
    """Whether an AdapterDeployment has something that moves with the clock, not with events: a
    canary step's pause, Prometheus triggers to evaluate, a retraining FineTuneJob to judge."""
    spec, status = body.get("spec") or {}, body.get("status") or {}
    if status.get("canary") or (spec.get("monitoring") or {}).get("prometheusUrl"):
        return True
    return any(r.get("outcome") in ("Pending", "Running") for r in status.get("retrains") or [])


def _values(index: Mapping[Any, Iterable[Any]] | None, key: Key) -> list[Any]:
    if index is None or key not in index:
        return []
    return list(index[key])


class Controller:
    def __init__(self, kube: Kube, settings: OperatorSettings) -> None:
        self.kube, self.settings = kube, settings
        self.finetunejobs = WorkQueue(self._reconcile_finetunejob, settings.reconcile_concurrency, log)
        self.adapters = WorkQueue(self._reconcile_adapter, settings.reconcile_concurrency, log)
        self.followers = ProgressFollowers(
            kube,
            TRAINER_CONTAINER,
            settings.log_tail_lines,
            self._progress,
            min_interval=settings.progress_seconds,
            max_streams=settings.max_log_streams,
            max_backoff=settings.log_reopen_max_seconds,
            logger=log,
        )
        self.indices: dict[str, Mapping[Any, Iterable[Any]]] = {}
        self._own_writes: dict[tuple[str, Key], str] = {}  # resourceVersion of our last status patch
        self._bodies: dict[tuple[str, Key], dict[str, Any]] = {}  # newest body seen: events, our patches
        self._live: dict[Key, str | None] = {}  # FineTuneJob -> its stored phase (for the resync)
        self._resync: asyncio.Task[None] | None = None

    # -- what Kopf's handlers tell us ------------------------------------------------------------
    def bind(self, indices: Mapping[str, Any]) -> None:
        """Kopf hands its indices (and the context its event posting needs) only to handlers; the
        queues' workers run outside them, so the first handler call passes both on."""
        if self._resync is None:
            self.indices = {k: indices[k] for k in ("ftj_jobs", "ftj_pods", "adep_refs")}
            self.finetunejobs.context = self.adapters.context = contextvars.copy_context()
            self._resync = asyncio.create_task(self._resync_loop(), name="kubetune resync")

    def _remember(self, tag: str, key: Key, body: dict[str, Any]) -> None:
        """Keep the newest body of an object: the last watch event or our own patch's answer,
        whichever is later. resourceVersions are compared as the integers they are on etcd-backed
        API servers; where one is not, the reconcile reads the object fresh instead."""
        old = self._bodies.get((tag, key))
        try:
            newer = old is None or int(body["metadata"]["resourceVersion"]) >= int(
                old["metadata"]["resourceVersion"]
            )
        except (KeyError, ValueError):
            self._bodies.pop((tag, key), None)
            return
        if newer:
            self._bodies[(tag, key)] = body

    def finetunejob_seen(self, key: Key, body: dict[str, Any]) -> None:
        self._remember("ftj", key, body)
        self._live[key] = (body.get("status") or {}).get("phase")
        if body["metadata"].get("resourceVersion") != self._own_writes.get(("ftj", key)):
            self.finetunejobs.kick(key)
        owner = (body["metadata"].get("labels") or {}).get(LABEL_ADAPTERDEPLOYMENT)
        if owner:  # a retrain the AdapterDeployment is judging
            self.adapters.kick((key[0], owner))
        for name in _values(self.indices.get("adep_refs"), key):  # serves this job's adapter
            self.adapters.kick((key[0], name))

    def forget_finetunejob(self, key: Key) -> None:
        self.kube.forget(_path(FTJ, key))
        self._live.pop(key, None)
        self._bodies.pop(("ftj", key), None)
        self._own_writes.pop(("ftj", key), None)
        self.finetunejobs.forget(key)
        self.followers.forget(key)

    def adapter_seen(self, key: Key, body: dict[str, Any]) -> None:
        self._remember("adep", key, body)
        if body["metadata"].get("resourceVersion") != self._own_writes.get(("adep", key)):
            self.adapters.kick(key)

    def forget_adapter(self, key: Key) -> None:
        self._bodies.pop(("adep", key), None)
        self._own_writes.pop(("adep", key), None)
        self.adapters.forget(key)

    def _progress(self, key: Hashable, delay: float) -> None:
        self.finetunejobs.kick(key, delay)

    # -- the reconciles -------------------------------------------------------------------------
    async def _current(self, tag: str, kind: tuple[str, str], key: Key) -> dict[str, Any] | None:
        """The object as of its newest watch event or our newest write (one GET when neither is known)."""
        body = self._bodies.get((tag, key))
        if body is None:
            body = await self.kube.get(_path(kind, key))
            if body is not None:
                self._remember(tag, key, body)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None
        return body

    async def _reconcile_finetunejob(self, key: Hashable) -> float | None:
        assert isinstance(key, tuple)
        body = await self._current("ftj", FTJ, key)
        if body is None:
            return None
        children = Children(
            _values(self.indices.get("ftj_jobs"), key), _values(self.indices.get("ftj_pods"), key)
        )
        outcome = await finetunejob.reconcile(body, self, children, log)
        await self._write("ftj", FTJ, key, body, outcome)
        return outcome.requeue_after

    async def _reconcile_adapter(self, key: Hashable) -> float | None:
        assert isinstance(key, tuple)
        body = await self._current("adep", ADEP, key)
        if body is None:
            return None
        outcome = await adapterdeployment.reconcile_adapter(body, self, log)
        await self._write("adep", ADEP, key, body, outcome)
        if outcome.requeue_after is not None:
            return outcome.requeue_after
        current = self._bodies.get(("adep", key), body)
        if _timed(current):
            return self.settings.adapter_resync_seconds
        # Nothing timed: its own changes, its Deployments' and its FineTuneJobs' wake it; the slow
        # resync (jittered, so 1,000 of them do not wake at once) is the safety net.
        return self.settings.resync_seconds * random.uniform(0.9, 1.1)

    async def _write(
        self, tag: str, kind: tuple[str, str], key: Key, body: dict[str, Any], outcome: Outcome
    ) -> None:
        if outcome.status:
            log.debug("%s %s/%s: status patch of %s", tag, key[0], key[1], sorted(outcome.status))
            path = f"{_path(kind, key)}/status"
            patched = await self.kube.merge_patch(path, {"status": outcome.status})
            if patched is not None:
                self._remember(tag, key, patched)
                self._own_writes[(tag, key)] = patched["metadata"].get("resourceVersion", "")
                if tag == "ftj":
                    self._live[key] = (patched.get("status") or {}).get("phase")
        for event in outcome.events:
            kopf.event(body, type=event.type, reason=event.reason, message=event.message)

    async def _resync_loop(self) -> None:
        """The safety net for a missed event: every live FineTuneJob once per resyncSeconds, spread
        evenly (1,000 jobs and a 300 s resync: one reconcile every 0.3 s, never 1,000 at once)."""
        period = self.settings.resync_seconds
        while True:
            keys = [k for k, phase in self._live.items() if phase not in TERMINAL_PHASES]
            if not keys:
                await asyncio.sleep(period)
                continue
            gap = period / len(keys)
            for key in keys:
                await asyncio.sleep(gap)
                if key in self._live:
                    self.finetunejobs.kick(key)

    async def close(self) -> None:
        if self._resync is not None:
            self._resync.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._resync
        await self.followers.close()
        await self.finetunejobs.close()
        await self.adapters.close()
