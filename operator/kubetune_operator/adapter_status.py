"""AdapterDeployment: which adapter to serve, and status from the Deployment's observed state (pure)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubetune.api.adapterdeployment import AdapterDeployment, ExtraTask
from kubetune.api.adapterdeployment_status import (
    ActiveAdapter,
    AdapterDeploymentStatus,
    HistoryEntry,
    ServedTask,
)
from kubetune.api.common import ConditionStatus
from kubetune.api.finetunejob import FineTuneJob, TaskType
from kubetune.api.runtime import VLLM_NO_CLASSIFIER
from kubetune_operator.adapter_history import append_history, history_entry
from kubetune_operator.builders.serving import (
    EXTRA_VERSIONS_ANNOTATION,
    PROGRESS_DEADLINE_SECONDS,
    VERSION_ANNOTATION,
    ResolvedAdapter,
    ResolvedTask,
    extra_versions,
    loads_in_place,
    scale_selector,
)
from kubetune_operator.conditions import get_condition, set_condition
from kubetune_operator.in_place_load import LOADING, InPlaceLoad, in_place_verdict, loading_since, with_since
from kubetune_operator.status import Event


@dataclass(frozen=True)
class Unresolved:
    reason: str
    message: str


def resolve_adapter(
    ad: AdapterDeployment,
    ftj: dict[str, Any] | None,
    history: list[HistoryEntry],
    active: str | None = None,
    promoted: str | None = None,
) -> ResolvedAdapter | Unresolved:
    """The adapter to serve now: a pinned history version, a URI, or the referenced job's result.

    While a referenced job is missing or re-running, the active version keeps serving: a retrain
    never takes a working endpoint down.
    """
    wanted = _resolve(ad, ftj, history, promoted)
    if isinstance(wanted, Unresolved) and active is not None and ad.spec.adapter.version is None:
        return _from_history(ad, ftj, history, active) or wanted
    return wanted


def _from_history(
    ad: AdapterDeployment, ftj: dict[str, Any] | None, history: list[HistoryEntry], version: str
) -> ResolvedAdapter | None:
    """A version rolled out before, as a ResolvedAdapter (None when it is not in the history)."""
    for entry in history:
        if entry.version == version:
            task = ad.spec.task or _task_of(ftj) or "sequence-classification"
            return ResolvedAdapter(
                entry.version, entry.uri, task, entry.digest, entry.fine_tune_job, entry.accuracy
            )
    return None


def _resolve(
    ad: AdapterDeployment, ftj: dict[str, Any] | None, history: list[HistoryEntry], promoted: str | None
) -> ResolvedAdapter | Unresolved:
    source = ad.spec.adapter
    if source.version is not None:
        pinned = _from_history(ad, ftj, history, source.version)
        if pinned is not None:
            return pinned
        known = ", ".join(e.version for e in history) or "none"
        return Unresolved(
            "UnknownVersion", f"adapter.version {source.version} is not in status.history ({known})"
        )
    if source.uri is not None and promoted is None:
        assert ad.spec.task is not None  # enforced by the model
        return _from_uri(source.uri, ad.spec.task)
    # A promoted retrain supersedes the referenced job (the loop's champion).
    name = promoted or (source.fine_tune_job_ref.name if source.fine_tune_job_ref else "")
    resolved = _from_job(name, ftj)
    refused = runtime_refusal(ad, ftj) if ftj is not None else None
    return refused if refused is not None and not isinstance(resolved, Unresolved) else resolved


RUNTIME_REFUSED = "RuntimeCannotServe"


def runtime_refusal(ad: AdapterDeployment, ftj: dict[str, Any]) -> Unresolved | None:
    """What runtime.engine vllm cannot serve of a job's adapter, seen only once the job is resolved:
    a LoRA rank above runtime.maxLoraRank (vLLM refuses the load) or a classifier."""
    runtime = ad.spec.runtime
    if runtime.engine != "vllm":
        return None
    job = FineTuneJob.model_validate(ftj)
    name = job.metadata.name
    if job.spec.lora.r > runtime.max_lora_rank:
        return Unresolved(
            RUNTIME_REFUSED,
            f"FineTuneJob {name} trained LoRA rank {job.spec.lora.r}, above runtime.maxLoraRank "
            f"{runtime.max_lora_rank}: vLLM would refuse it; raise maxLoraRank or use engine kubetune",
        )
    if job.spec.task.type == "sequence-classification":
        return Unresolved(
            RUNTIME_REFUSED, f"FineTuneJob {name} trained a sequence classifier: {VLLM_NO_CLASSIFIER}"
        )
    if job.spec.training.recipe == "heads":
        return Unresolved(
            RUNTIME_REFUSED,
            f"FineTuneJob {name} trained training.recipe heads (answer heads beside the LoRA), which vLLM "
            "cannot run; train recipe lora for engine vllm, or use engine kubetune",
        )
    return None


def _from_uri(uri: str, task: TaskType) -> ResolvedAdapter:
    return ResolvedAdapter("uri-" + hashlib.sha256(uri.encode()).hexdigest()[:10], uri, task)


def _from_job(name: str, ftj: dict[str, Any] | None) -> ResolvedAdapter | Unresolved:
    """The adapter of FineTuneJob ``name`` once it succeeded."""
    if ftj is None:
        return Unresolved("FineTuneJobNotFound", f"FineTuneJob {name} not found")
    job = FineTuneJob.model_validate(ftj)
    phase = job.status.phase
    result = job.status.result
    if phase != "Succeeded" or result is None or not result.adapter_uri:
        return Unresolved(
            "WaitingForFineTuneJob", f"waiting for FineTuneJob {name} to succeed (phase {phase})"
        )
    digest = result.digest
    version = f"{name}-{digest.removeprefix('sha256:')[:8]}" if digest else name
    return ResolvedAdapter(
        version,
        result.adapter_uri,
        job.spec.task.type,
        digest,
        name,
        job.status.accuracy,
        job.spec.gate_metric,
    )


def resolve_extra_tasks(
    ad: AdapterDeployment, ftjs: Mapping[str, dict[str, Any] | None], served: Sequence[ServedTask]
) -> list[ResolvedTask] | Unresolved:
    """The adapter of every spec.extraTasks[] (``ftjs``: referenced FineTuneJobs by name, None when
    missing), or the first task that cannot be served yet. As for the primary adapter, a task whose
    job is missing or not finished keeps serving the version it serves now."""
    resolved = []
    for i, extra in enumerate(ad.spec.extra_tasks):
        adapter = _resolve_extra(extra, ftjs)
        if isinstance(adapter, Unresolved):
            now = next((t for t in served if t.name == extra.name and t.task == extra.task), None)
            if now is None or adapter.reason == "TaskMismatch":
                return Unresolved(adapter.reason, f"extraTasks[{i}] ({extra.name}): {adapter.message}")
            adapter = ResolvedAdapter(
                now.version, now.uri, now.task, now.digest, now.fine_tune_job, now.accuracy
            )
        resolved.append(ResolvedTask(extra, adapter))
    return resolved


def _resolve_extra(
    extra: ExtraTask, ftjs: Mapping[str, dict[str, Any] | None]
) -> ResolvedAdapter | Unresolved:
    if extra.adapter.uri is not None:
        return _from_uri(extra.adapter.uri, extra.task)
    assert extra.adapter.fine_tune_job_ref is not None  # enforced by the model
    name = extra.adapter.fine_tune_job_ref.name
    adapter = _from_job(name, ftjs.get(name))
    if isinstance(adapter, ResolvedAdapter) and adapter.task != extra.task:
        return Unresolved(
            "TaskMismatch", f"FineTuneJob {name} trained a {adapter.task} adapter, not {extra.task}"
        )
    return adapter


def served_tasks(extras: Sequence[ResolvedTask]) -> list[ServedTask]:
    return [
        ServedTask(
            name=t.spec.name,
            task=t.adapter.task,
            version=t.adapter.version,
            uri=t.adapter.uri,
            digest=t.adapter.digest,
            fine_tune_job=t.adapter.fine_tune_job,
            accuracy=t.adapter.accuracy,
        )
        for t in extras
    ]


def _task_of(ftj: dict[str, Any] | None) -> Any:
    return ((ftj or {}).get("spec", {}).get("task") or {}).get("type")


def _bool(value: bool) -> ConditionStatus:
    return "True" if value else "False"


def derive_adapter_status(
    ad: AdapterDeployment,
    resolved: ResolvedAdapter | Unresolved,
    deployment: dict[str, Any] | None,
    prev: AdapterDeploymentStatus,
    now: str,
    extras: Sequence[ResolvedTask] = (),
    serving: InPlaceLoad | None = None,
) -> tuple[AdapterDeploymentStatus, list[Event]]:
    """Phase, conditions, served adapters and history from the Deployment's observed state;
    ``extras``: the adapters of spec.extraTasks written into the same serving pods; ``serving``:
    where the version is loaded in place (builders.serving.loads_in_place), how many ready stable
    pods report serving it and the load failures they logged (None: not asked, status already
    records it as the active version); past the deadline the load is stalled (in_place_load.py)."""
    gen = ad.metadata.generation
    status = prev.model_copy(deep=True)
    status.observed_generation = gen
    events: list[Event] = []
    conds = status.conditions
    if isinstance(resolved, Unresolved):
        refused = resolved.reason == RUNTIME_REFUSED  # waiting would not help: a Warning
        status.phase, status.message = "Degraded" if refused else "Pending", resolved.message
        why = resolved.reason
        conds = set_condition(conds, "AdapterResolved", "False", resolved.reason, resolved.message, now, gen)
    else:
        conds = set_condition(
            conds, "AdapterResolved", "True", "Resolved", f"{resolved.version} from {resolved.uri}", now, gen
        )
        progressing = get_condition(prev.conditions, "Progressing")
        status.phase, status.message, reason = _rollout_phase(ad, resolved, deployment, extras, serving)
        if reason == LOADING and serving is not None:
            status.phase, status.message, reason = in_place_verdict(
                resolved.version,
                serving,
                ad.spec.replicas,
                prev.active_adapter.version if prev.active_adapter else None,
                progressing,
                _deadline(deployment),
                now,
            )
        why = reason
        ds = (deployment or {}).get("status", {})
        status.ready_replicas = int(ds.get("readyReplicas") or 0)
        status.updated_replicas = int(ds.get("updatedReplicas") or 0)
        conds = set_condition(
            conds, "Progressing", _bool(status.phase == "Progressing"), reason, status.message or "", now, gen
        )
        if reason == LOADING:  # a new target version restarts the deadline's clock (in_place_load.py)
            conds = with_since(conds, "Progressing", loading_since(progressing, resolved.version, now))
        conds = set_condition(
            conds, "Available", _bool(status.phase == "Available"), reason, status.message or "", now, gen
        )
        was = prev.active_adapter
        if status.phase == "Available" and (
            was is None or (was.version, was.uri) != (resolved.version, resolved.uri)
        ):
            status.active_adapter = ActiveAdapter(
                version=resolved.version,
                uri=resolved.uri,
                digest=resolved.digest,
                fine_tune_job=resolved.fine_tune_job,
                accuracy=resolved.accuracy,
            )
            status.history = append_history(status.history, history_entry(resolved, now))
            before = "none" if was is None else was.version if was.version != resolved.version else was.uri
            events.append(Event("Normal", "RolledOut", f"serving adapter {resolved.version} (was {before})"))
        if status.phase == "Available" and served_tasks(extras) != prev.extra_tasks:
            status.extra_tasks = served_tasks(extras)
            served = ", ".join(f"{t.name} {t.version}" for t in status.extra_tasks) or "none"
            events.append(Event("Normal", "RolledOut", f"serving extra tasks: {served}"))
    ready = status.phase == "Available"
    conds = set_condition(
        conds,
        "Ready",
        _bool(ready),
        "Available" if ready else (status.phase or "Pending"),
        status.message or "",
        now,
        gen,
    )
    status.conditions = conds
    status.replicas = int(((deployment or {}).get("status") or {}).get("replicas") or 0)
    status.selector = scale_selector(ad)
    if status.phase != prev.phase:
        # A Degraded event carries the condition's reason (ReplicasUnavailable, InPlaceLoadStalled,
        # RuntimeCannotServe...): what `kubectl get events --field-selector reason=...` filters on.
        if status.phase == "Degraded":
            events.insert(0, Event("Warning", why, status.message or ""))
        else:
            events.insert(0, Event("Normal", status.phase or "Pending", status.message or ""))
    return status, events


def _deadline(deployment: dict[str, Any] | None) -> int:
    """The Deployment's progressDeadlineSeconds, as rendered (builders.serving)."""
    spec = (deployment or {}).get("spec") or {}
    return int(spec.get("progressDeadlineSeconds") or PROGRESS_DEADLINE_SECONDS)


def _rollout_phase(
    ad: AdapterDeployment,
    resolved: ResolvedAdapter,
    deployment: dict[str, Any] | None,
    extras: Sequence[ResolvedTask],
    serving: InPlaceLoad | None = None,
) -> tuple[Any, str, str]:
    if deployment is None:
        return "Progressing", "creating the serving Deployment", "Creating"
    want = ad.spec.replicas
    spec, ds = deployment.get("spec", {}), deployment.get("status", {})
    annotations = spec.get("template", {}).get("metadata", {}).get("annotations", {})
    # Loaded in place, the template holds no version: the pods' own reports say which one they serve.
    template_current = loads_in_place(ad, "stable") or (
        annotations.get(VERSION_ANNOTATION) == resolved.version
        and annotations.get(EXTRA_VERSIONS_ANNOTATION) == extra_versions(extras)
    )
    for cond in ds.get("conditions", []) or []:
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            return (
                "Degraded",
                f"rollout of {resolved.version} stuck: {cond.get('message', '')}",
                "ProgressDeadlineExceeded",
            )
    ready = int(ds.get("readyReplicas") or 0)
    updated = int(ds.get("updatedReplicas") or 0)
    total = int(ds.get("replicas") or 0)
    observed = ds.get("observedGeneration", 0) >= deployment.get("metadata", {}).get("generation", 0)
    # The Deployment controller sets reason NewReplicaSetAvailable once a rollout has completed and
    # keeps it while pods later turn unready: until then pods that are not ready yet are a rollout in
    # progress (new pods start unready), after it they are a degraded service.
    completed = any(
        cond.get("type") == "Progressing" and cond.get("reason") == "NewReplicaSetAvailable"
        for cond in ds.get("conditions", []) or []
    )
    if (
        not template_current
        or not observed
        or updated < want
        or total > updated
        or (not completed and ready < want)
    ):
        return (
            "Progressing",
            f"rolling out {resolved.version}: {updated}/{want} updated, {ready} ready",
            "RollingOut",
        )
    if ready < want:
        return "Degraded", f"{ready}/{want} serving pods ready", "ReplicasUnavailable"
    if loads_in_place(ad, "stable") and serving is not None and serving.serving < want:
        return "Progressing", "", LOADING  # still loading, or stalled: derive_adapter_status says which
    return "Available", f"serving {resolved.version} on {ready}/{want} pods", "Available"
