"""Which adapter version ``promote`` and ``rollback`` may pin (pure; raise ``PluginError`` to refuse).

The operator resolves ``spec.adapter.version`` only against ``status.history`` (a pin to anything else
leaves the AdapterDeployment Pending with UnknownVersion), so both commands accept history versions only.
A pin serves the URI and digest recorded there: every version has its own folder, and a server refuses
weights whose digest differs. ``promote`` may pin a version rollout.requireImprovement skipped (a person
rolls forward on purpose); ``rollback`` without --version goes to the last version that was served.
"""

from __future__ import annotations

from typing import Any

from kubetune.kubectl_plugin.errors import PluginError


def history_versions(adep: dict[str, Any]) -> list[str]:
    """Versions rolled out, oldest first (the operator appends the newest last)."""
    history = adep.get("status", {}).get("history") or []
    return [str(entry["version"]) for entry in history if isinstance(entry, dict) and entry.get("version")]


def served_versions(adep: dict[str, Any]) -> list[str]:
    """History versions that were rolled out (not Skipped by rollout.requireImprovement), oldest first."""
    history = adep.get("status", {}).get("history") or []
    return [
        str(entry["version"])
        for entry in history
        if isinstance(entry, dict) and entry.get("version") and entry.get("outcome", "RolledOut") != "Skipped"
    ]


def pinned_entry(adep: dict[str, Any], version: str) -> dict[str, Any]:
    """The history entry a pin of ``version`` serves (its uri and digest)."""
    history = adep.get("status", {}).get("history") or []
    return next((e for e in history if isinstance(e, dict) and e.get("version") == version), {})


def active_version(adep: dict[str, Any]) -> str | None:
    return (adep.get("status", {}).get("activeAdapter") or {}).get("version")


def _name(adep: dict[str, Any]) -> str:
    return str(adep.get("metadata", {}).get("name", "?"))


def check_promotable(adep: dict[str, Any], version: str) -> str:
    """``version`` when the operator can serve it; a refusal naming what can be pinned otherwise."""
    known = history_versions(adep)
    if version in known:
        return version
    canary = (adep.get("status", {}).get("canary") or {}).get("version")
    if version == canary:
        raise PluginError(
            f"{version} is the canary of AdapterDeployment {_name(adep)}, not yet in status.history; "
            "the rollout promotes it when every step passes (pinnable: " + (", ".join(known) or "none") + ")"
        )
    raise PluginError(
        f"version {version} is not in status.history of AdapterDeployment {_name(adep)} "
        f"(known: {', '.join(known) or 'none'})"
    )


def rollback_target(adep: dict[str, Any], version: str | None = None) -> str:
    """``version`` if given (it must be in history), else the history entry before the active one."""
    if version is not None:
        return check_promotable(adep, version)
    known = served_versions(adep)
    active = active_version(adep)
    if active is None:
        raise PluginError(f"AdapterDeployment {_name(adep)} serves no adapter yet; nothing to roll back")
    if active not in known:
        raise PluginError(
            f"the active version {active} of AdapterDeployment {_name(adep)} is not in status.history; "
            "name the version with --version"
        )
    rejected = set(adep.get("status", {}).get("rolledBack") or [])
    earlier = [v for v in known[: known.index(active)] if v not in rejected]
    if not earlier:
        raise PluginError(
            f"AdapterDeployment {_name(adep)} has no version before {active} in status.history "
            "to roll back to"
        )
    return earlier[-1]
