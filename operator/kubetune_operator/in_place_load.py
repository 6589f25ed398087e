"""Status of an adapter version loaded in place (runtime vllm, builders.serving.loads_in_place): still
loading, or stalled past the rollout deadline (pure).

A Deployment's rollout has progressDeadlineSeconds, after which the Deployment controller calls it
stuck and status goes Degraded (ProgressDeadlineExceeded). A version loaded in place rolls no pods,
so nothing else would ever call it stuck: an engine that cannot load it leaves the pods serving the
old version and the AdapterDeployment Progressing for good. The same deadline applies here, counted
from the Progressing condition's lastTransitionTime while it reports this version's load (a new
target version restarts it, as a new ReplicaSet restarts a Deployment's). Past it, status goes
Degraded with reason InPlaceLoadStalled and quotes what the pods logged when their engine refused the
version (served_report's ``failed``); the pods keep serving the old one. It stays so until every
ready pod serves the version or another version is wanted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kubetune.api.common import Condition
from kubetune_operator.canary import _elapsed

LOADING = "LoadingInPlace"
STALLED = "InPlaceLoadStalled"


@dataclass(frozen=True)
class InPlaceLoad:
    """What the ready stable pods report about the version being loaded: how many serve it, and the
    load failures they logged for it (``"<pod>: <reason>"``, reasons clipped by served_report)."""

    serving: int
    failures: tuple[str, ...] = ()


def _prefix(version: str) -> str:
    return f"loading {version} in place "


def reports_load_of(progressing: Condition | None, version: str) -> bool:
    """Whether the Progressing condition reports the in-place load of ``version`` (loading or stalled)."""
    return (
        progressing is not None
        and progressing.reason in (LOADING, STALLED)
        and progressing.message.startswith(_prefix(version))
    )


def loading_since(progressing: Condition | None, version: str, now: str) -> str:
    """When the load of ``version`` began: the condition's lastTransitionTime while it reports that
    load, else ``now`` (the load starts with this reconcile)."""
    if progressing is not None and reports_load_of(progressing, version):
        return progressing.last_transition_time
    return now


def in_place_verdict(
    version: str,
    load: InPlaceLoad,
    want: int,
    active: str | None,
    progressing: Condition | None,
    deadline_s: int,
    now: str,
) -> tuple[Any, str, str]:
    """(phase, message, reason) while fewer than ``want`` ready pods serve ``version``: Progressing
    LoadingInPlace until ``deadline_s`` have passed since the load began, then Degraded
    InPlaceLoadStalled (and Degraded it stays: ``progressing`` is the condition written last)."""
    if not _stalled(version, progressing, deadline_s, now):
        message = f"{_prefix(version)}(pods keep running): {load.serving}/{want} ready pods serve it"
        return "Progressing", message, LOADING
    return "Degraded", stalled_message(version, load, want, active, deadline_s), STALLED


def _stalled(version: str, progressing: Condition | None, deadline_s: int, now: str) -> bool:
    if progressing is not None and progressing.reason == STALLED and reports_load_of(progressing, version):
        return True  # once stalled, until the version serves (another version starts afresh)
    return _elapsed(loading_since(progressing, version, now), now) >= deadline_s


def stalled_message(version: str, load: InPlaceLoad, want: int, active: str | None, deadline_s: int) -> str:
    """Which version, how many ready pods serve it, what they serve instead and what their logs say."""
    keep = f"they keep serving {active}" if active else "they serve no version of it"
    text = (
        f"{_prefix(version)}stalled: {load.serving}/{want} ready pods serve it after "
        f"{deadline_s}s (progressDeadlineSeconds); {keep}"
    )
    return text + _quoted(load.failures)


def _quoted(failures: Sequence[str]) -> str:
    if not failures:
        return "; no pod logged a load failure (see the kubetune container's log)"
    more = f" (and {len(failures) - 1} more pods)" if len(failures) > 1 else ""
    return f"; the load failed: {failures[0]}{more}"


def with_since(conditions: list[Condition], type_: str, since: str) -> list[Condition]:
    """``conditions`` with ``type_``'s lastTransitionTime set to ``since`` (the load's start)."""
    return [
        c.model_copy(update={"last_transition_time": since}) if c.type == type_ else c for c in conditions
    ]
