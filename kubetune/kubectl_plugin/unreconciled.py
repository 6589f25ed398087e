"""An object no operator has looked at: say so, and what to check (pure).

Without a running operator that watches its namespace, a FineTuneJob or AdapterDeployment just sits
there with an empty status; ``kubectl get`` shows a blank phase and nothing more. Every reconcile
writes ``status.observedGeneration``, so its absence a little while after creation is the tell.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from kubetune.kubectl_plugin.render import human_duration, parse_time

# An operator reconciles a new object within a second or two; leave room for a busy or restarting one.
GRACE_SECONDS = 15.0


def unreconciled(obj: dict[str, Any], now: datetime, grace: float = GRACE_SECONDS) -> str | None:
    """A one-line warning for an object without ``status.observedGeneration`` past ``grace`` seconds
    after its creation, naming the namespace to check; None while it is young or once reconciled."""
    meta, status = obj.get("metadata", {}), obj.get("status") or {}
    if status.get("observedGeneration") is not None:
        return None
    created = parse_time(meta.get("creationTimestamp"))
    if created is None or (now - created).total_seconds() < grace:
        return None
    namespace = meta.get("namespace") or "default"
    kind, name = obj.get("kind") or "object", meta.get("name", "?")
    return (
        f"{kind} {namespace}/{name}: no kubetune operator has reconciled it in "
        f"{human_duration((now - created).total_seconds())} (no status.observedGeneration). Is the "
        f"operator running, and does it watch namespace {namespace}? The chart "
        "(`helm install kubetune charts/kubetune -n kubetune`) watches all namespaces unless "
        f"watchNamespaces is set (then add {namespace} to it); a standalone `kubetune operator -n NS` "
        f"watches only its -n namespaces (add -n {namespace}, or use --all-namespaces). "
        "Check: kubectl get pods -A "
        "-l app.kubernetes.io/part-of=kubetune,app.kubernetes.io/component=operator"
    )
