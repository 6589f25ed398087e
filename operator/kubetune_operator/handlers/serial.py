"""One reconcile per object at a time, on the object as the API server has it now.

Kopf runs timers concurrently with event handlers and hands each the body of its own event, so two
reconciles of one object could interleave on stale status (two retrains for one breach, a canary
reset). Each reconcile therefore holds a per-object lock, re-reads the object, and writes its status
itself before the lock is released.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import kopf

from kubetune_operator.kube import Kube, object_path
from kubetune_operator.status import Event


@dataclass
class Outcome:
    """What a reconcile decided: a merge patch of ``.status`` (None: unchanged) and events to post."""

    status: dict[str, Any] | None = None
    events: list[Event] = field(default_factory=list)


Reconcile = Callable[[dict[str, Any], kopf.Memo, logging.Logger], Awaitable[Outcome]]


def serialized(core: Reconcile) -> Callable[..., Awaitable[None]]:
    """A Kopf handler running ``core`` under the object's lock on a fresh read of the object."""

    async def handler(body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
        lock: asyncio.Lock = memo.setdefault("reconcile_lock", asyncio.Lock())
        kube: Kube = memo.kube
        async with lock:
            fresh = await kube.get(object_path(dict(body)))
            if fresh is None or fresh.get("metadata", {}).get("deletionTimestamp"):
                return
            outcome = await core(fresh, memo, logger)
            if outcome.status:
                await kube.merge_patch(object_path(fresh) + "/status", {"status": outcome.status})
        for event in outcome.events:
            kopf.event(fresh, type=event.type, reason=event.reason, message=event.message)

    handler.__name__ = handler.__qualname__ = core.__name__
    return handler
