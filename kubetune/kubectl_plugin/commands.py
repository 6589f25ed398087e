"""The subcommands: read with kubectl, decide with the pure helpers, print with the renderers.

Each takes the parsed arguments and a ``Kubectl`` and returns the exit code; refusals raise
``PluginError`` (``main`` prints them as one line).
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from typing import Any

from kubetune.api.finetunejob import TERMINAL_PHASES
from kubetune.kubectl_plugin import pods, render, versions
from kubetune.kubectl_plugin.args import ADEP_ALIASES, FTJ_ALIASES
from kubetune.kubectl_plugin.errors import NotFound, PluginError, UsageError
from kubetune.kubectl_plugin.explain import explain_failure, trouble
from kubetune.kubectl_plugin.kubectl import ADEP, FTJ, Kubectl
from kubetune.kubectl_plugin.unreconciled import unreconciled

KIND = {FTJ: "FineTuneJob", ADEP: "AdapterDeployment"}


def _now() -> datetime:
    return datetime.now(UTC)


def _get(kubectl: Kubectl, resource: str, name: str) -> dict[str, Any]:
    try:
        return kubectl.get(resource, name)
    except NotFound:
        where = f" in namespace {kubectl.flags.namespace}" if kubectl.flags.namespace else ""
        raise NotFound(f"{KIND[resource]} {name} not found{where}") from None


def _phase(job: dict[str, Any]) -> str:
    return (job.get("status") or {}).get("phase") or "Pending"


# -- get -----------------------------------------------------------------------------------------
def _get_targets(what: list[str]) -> tuple[list[str], str | None]:
    """``[ftj|adep] [NAME]`` -> the resources to read and the name, if any."""
    if len(what) > 2:
        raise UsageError(f"get takes at most a kind and a name, got {' '.join(what)}")
    if what and what[0].lower() in FTJ_ALIASES:
        return [FTJ], (what[1] if len(what) > 1 else None)
    if what and what[0].lower() in ADEP_ALIASES:
        return [ADEP], (what[1] if len(what) > 1 else None)
    if len(what) == 2:
        raise UsageError(f"unknown kind {what[0]!r}: use ftj or adep")
    return [FTJ, ADEP], (what[0] if what else None)


def cmd_get(args: argparse.Namespace, kubectl: Kubectl) -> int:
    resources, name = _get_targets(args.what)
    if name is not None and kubectl.flags.all_namespaces:
        raise UsageError("a name cannot be combined with -A/--all-namespaces (as in kubectl get)")
    found: dict[str, list[dict[str, Any]]] = {}
    for resource in resources:
        if name is None:
            found[resource] = kubectl.list(resource)
        else:
            obj = kubectl.find(resource, name)
            found[resource] = [obj] if obj is not None else []
    if not any(found.values()):
        if name is not None:
            kinds = " or ".join(KIND[r] for r in resources)
            raise NotFound(f"no {kinds} named {name}")
        where = "any namespace" if kubectl.flags.all_namespaces else "the namespace"
        print(f"No resources found in {where}.", file=sys.stderr)
        return 0
    now, namespaces = _now(), kubectl.flags.all_namespaces
    sections = []
    if found.get(FTJ):
        sections.append(render.finetunejob_table(found[FTJ], now, namespaces))
    if found.get(ADEP):
        sections.append(render.adapterdeployment_table(found[ADEP], namespaces))
    print("\n\n".join(sections))
    # Like kubectl's own warnings: on stderr, so a script reading the table is not disturbed.
    for obj in (*found.get(FTJ, []), *found.get(ADEP, [])):
        if (hint := unreconciled(obj, now)) is not None:
            print(f"Warning: {hint}", file=sys.stderr)
    return 0


# -- watch ---------------------------------------------------------------------------------------
def cmd_watch(args: argparse.Namespace, kubectl: Kubectl) -> int:
    """A line per change until a terminal phase: 0 on Succeeded, 1 on Failed/Cancelled or timeout."""
    deadline = time.monotonic() + args.timeout if args.timeout > 0 else None
    last: tuple[Any, ...] | None = None
    while True:
        job = _get(kubectl, FTJ, args.name)
        if render.watch_key(job) != last:
            last = render.watch_key(job)
            print(render.watch_line(job, _now()), flush=True)
        phase = _phase(job)
        if phase in TERMINAL_PHASES:
            return 0 if phase == "Succeeded" else 1
        if deadline is not None and time.monotonic() + args.interval > deadline:
            raise PluginError(
                f"timed out after {render.human_duration(args.timeout)} waiting for FineTuneJob "
                f"{args.name} to finish (phase {phase})"
            )
        time.sleep(args.interval)


# -- logs ----------------------------------------------------------------------------------------
def _log_pod(kubectl: Kubectl, name: str) -> dict[str, Any]:
    for component in (pods.TRAIN, pods.VALIDATE):
        pod = pods.newest_pod(kubectl.list("pods", selector=pods.pod_selector(name, component)))
        if pod is not None:
            return pod
    job = _get(kubectl, FTJ, name)  # not found beats "no pods"
    raise PluginError(f"FineTuneJob {name} has no validation or training pod yet (phase {_phase(job)})")


def cmd_logs(args: argparse.Namespace, kubectl: Kubectl) -> int:
    if args.tail is not None and args.tail < 0:
        raise UsageError("--tail must be 0 or more")
    pod = _log_pod(kubectl, args.name)
    call = ["logs", pod["metadata"]["name"], f"--container={pods.TRAINER_CONTAINER}"]
    if args.follow:
        call.append("--follow")
    if args.tail is not None:
        call.append(f"--tail={args.tail}")
    for line in kubectl.stream(*call):
        print(line.rstrip("\n") if args.raw else render.log_line(line), flush=True)
    return 0


def _guarded(obj: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """``patch`` plus the resourceVersion read: the server answers Conflict if the object changed since
    the checks ran on it, instead of applying a decision made on stale state."""
    rv = obj.get("metadata", {}).get("resourceVersion")
    return {"metadata": {"resourceVersion": rv}, **patch} if rv else patch


# -- suspend / resume ----------------------------------------------------------------------------
def _set_suspend(args: argparse.Namespace, kubectl: Kubectl, suspend: bool) -> int:
    job = _get(kubectl, FTJ, args.name)
    verb = "suspend" if suspend else "resume"
    phase = _phase(job)
    if phase in TERMINAL_PHASES:
        raise PluginError(
            f"cannot {verb} FineTuneJob {args.name}: it is {phase} (a finished job never runs again)"
        )
    if bool((job.get("spec") or {}).get("suspend")) == suspend:
        print(f"finetunejob {args.name} is already {'suspended' if suspend else 'not suspended'}")
        return 0
    kubectl.merge_patch(FTJ, args.name, _guarded(job, {"spec": {"suspend": suspend}}))
    print(f"finetunejob {args.name} {'suspended' if suspend else 'resumed'}")
    return 0


def cmd_suspend(args: argparse.Namespace, kubectl: Kubectl) -> int:
    return _set_suspend(args, kubectl, True)


def cmd_resume(args: argparse.Namespace, kubectl: Kubectl) -> int:
    return _set_suspend(args, kubectl, False)


# -- promote / rollback --------------------------------------------------------------------------
def _pin(kubectl: Kubectl, adep: dict[str, Any], version: str | None) -> None:
    patch = _guarded(adep, {"spec": {"adapter": {"version": version}}})
    kubectl.merge_patch(ADEP, adep["metadata"]["name"], patch)


def cmd_promote(args: argparse.Namespace, kubectl: Kubectl) -> int:
    adep = _get(kubectl, ADEP, args.name)
    if args.clear:
        _pin(kubectl, adep, None)
        print(f"adapterdeployment {args.name}: pin removed; serving follows spec.adapter again")
        return 0
    version = versions.check_promotable(adep, args.version)
    _pin(kubectl, adep, version)
    was = versions.active_version(adep) or "none"
    print(f"adapterdeployment {args.name}: pinned to {version} (was {was})")
    return 0


def cmd_rollback(args: argparse.Namespace, kubectl: Kubectl) -> int:
    adep = _get(kubectl, ADEP, args.name)
    version = versions.rollback_target(adep, args.version)
    _pin(kubectl, adep, version)
    entry = versions.pinned_entry(adep, version)
    print(
        f"adapterdeployment {args.name}: rolled back to {version} "
        f"(was {versions.active_version(adep) or 'none'}); serving {entry.get('uri', '?')} "
        f"digest {entry.get('digest') or 'unrecorded'}; `promote --clear` unpins"
    )
    return 0


# -- explain-failure -----------------------------------------------------------------------------
def cmd_explain_failure(args: argparse.Namespace, kubectl: Kubectl) -> int:
    job = _get(kubectl, FTJ, args.name)
    events: list[dict[str, Any]] = []
    termination = None
    now = _now()
    hint = unreconciled(job, now)
    if hint is None and trouble(job) is not None:
        selector = f"involvedObject.name={args.name},involvedObject.kind=FineTuneJob"
        events = kubectl.list("events", field_selector=selector)
        for component in (pods.TRAIN, pods.VALIDATE):
            failed = pods.failed_pod(kubectl.list("pods", selector=pods.pod_selector(args.name, component)))
            if failed is not None:
                termination = pods.termination_of(failed)
                break
    print(explain_failure(job, events, termination, now, hint))
    return 0
