"""status.history of an AdapterDeployment, and the rollout.requireImprovement gate (pure).

History is what rollback pins from, so it keeps one version per URI: every run writes its own folder
(kubetune.api.trainconfig.run_output_uri) and the servers check the recorded digest before serving.
"""

from __future__ import annotations

from kubetune.api.adapterdeployment import AdapterDeployment
from kubetune.api.adapterdeployment_status import HISTORY_LIMIT, HistoryEntry
from kubetune_operator.builders.serving import ResolvedAdapter


def append_history(history: list[HistoryEntry], entry: HistoryEntry) -> list[HistoryEntry]:
    """``entry`` as the newest, bounded to HISTORY_LIMIT. An older entry of the same version, or of
    the same URI, goes: a URI holds one adapter, so two versions on one path would let a rollback
    claim weights it does not serve (entries written before runs had their own folders can share one).
    """
    kept = [h for h in history if h.version != entry.version and h.uri != entry.uri]
    return [*kept, entry][-HISTORY_LIMIT:]


def history_entry(adapter: ResolvedAdapter, now: str, skipped: str | None = None) -> HistoryEntry:
    """The record of a version rolled out at ``now``, or skipped at ``now`` for ``skipped``."""
    return HistoryEntry(
        version=adapter.version,
        uri=adapter.uri,
        digest=adapter.digest,
        fine_tune_job=adapter.fine_tune_job,
        accuracy=adapter.accuracy,
        deployed_at=None if skipped else now,
        outcome="Skipped" if skipped else "RolledOut",
        reason=skipped,
        skipped_at=now if skipped else None,
    )


def gate_applies(
    ad: AdapterDeployment, candidate: ResolvedAdapter, serving: ResolvedAdapter | None, promoted: str | None
) -> bool:
    """requireImprovement judges a new run of adapter.fineTuneJobRef replacing a serving version.

    Not a pin (adapter.version: a person chose it), not adapter.uri (a person changed it), not a
    promoted retrain (the retraining loop already beat the champion on the same held-out rows, which
    comparing two jobs' own validation scores cannot do)."""
    ref = ad.spec.adapter.fine_tune_job_ref
    return (
        ad.spec.rollout.require_improvement
        and ad.spec.adapter.version is None
        and ref is not None
        and candidate.fine_tune_job == ref.name
        and candidate.fine_tune_job != promoted
        and serving is not None
        and serving.version != candidate.version
    )


def shortfall(candidate: ResolvedAdapter, serving: ResolvedAdapter) -> str | None:
    """Why ``candidate`` must not replace ``serving``: its gate metric is lower (a tie rolls out:
    "not worse", so a re-run that reproduces the score still ships its newer data), or it has none
    while the serving version has one. None when it may roll out; also when the serving version has
    no score to compare with.

    >>> a = ResolvedAdapter("s-aaaaaaaa", "pvc://o/s/1/adapter", "sequence-classification", accuracy=0.992)
    >>> b = ResolvedAdapter("s-bbbbbbbb", "pvc://o/s/2/adapter", "sequence-classification", accuracy=0.983)
    >>> shortfall(b, a)
    'accuracy 0.983 < serving 0.992 (s-aaaaaaaa)'
    """
    if serving.accuracy is None:
        return None
    metric = candidate.metric or "accuracy"
    if candidate.accuracy is None:
        return f"no {metric} reported; serving {serving.accuracy:g} ({serving.version})"
    if candidate.accuracy < serving.accuracy:
        return f"{metric} {candidate.accuracy:g} < serving {serving.accuracy:g} ({serving.version})"
    return None


def record_skip(
    history: list[HistoryEntry], candidate: ResolvedAdapter, reason: str, now: str
) -> list[HistoryEntry] | None:
    """History with ``candidate`` recorded as Skipped, or None when it is recorded so already (the
    gate is judged on every reconcile; a skip is recorded, and announced, once)."""
    if any(h.version == candidate.version and h.outcome == "Skipped" for h in history):
        return None
    return append_history(history, history_entry(candidate, now, skipped=reason))
