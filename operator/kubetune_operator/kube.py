"""A small async Kubernetes client for the children the operator owns.

Kopf watches and patches our custom resources itself; this client creates and patches child objects
with the same credentials Kopf logged in with (kubeconfig or in-cluster service account).
"""

from __future__ import annotations

import base64
import ssl
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import kopf

# apiVersion/kind -> (path prefix, plural) for every kind the builders produce.
_PLURALS = {
    ("v1", "ConfigMap"): "configmaps",
    ("v1", "Service"): "services",
    ("v1", "ServiceAccount"): "serviceaccounts",
    ("v1", "Pod"): "pods",
    ("batch/v1", "Job"): "jobs",
    ("apps/v1", "Deployment"): "deployments",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudgets",
    ("monitoring.coreos.com/v1", "PodMonitor"): "podmonitors",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "horizontalpodautoscalers",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobjects",
    ("kubetune.dev/v1alpha1", "FineTuneJob"): "finetunejobs",
    ("kubetune.dev/v1alpha1", "AdapterDeployment"): "adapterdeployments",
}


class KubeError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


# Answers that say "not now" rather than "no": throttling (429), an overloaded or restarting API
# server (5xx), a write that lost a race (409 on a patch). Retried soon, never counted as a failure.
_TRANSIENT = {429, 500, 502, 503, 504}
_MAX_RETRY_AFTER = 60.0


class KubeBusy(kopf.TemporaryError):
    """The API server asked us to come back later; Kopf retries the handler after ``delay``."""

    def __init__(self, status: int, message: str, delay: float) -> None:
        super().__init__(f"HTTP {status} (retrying in {delay:g} s): {message}", delay=delay)
        self.status = status


def retry_delay(retry_after: str | None, default: float = 1.0) -> float:
    """Seconds to wait from a Retry-After header (seconds form), bounded; ``default`` without one."""
    try:
        return min(max(float(retry_after), 0.1), _MAX_RETRY_AFTER) if retry_after else default
    except ValueError:
        return default


def collection_path(api_version: str, kind: str, namespace: str) -> str:
    plural = _PLURALS[(api_version, kind)]
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    return f"{prefix}/namespaces/{quote(namespace)}/{plural}"


def object_path(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{collection_path(obj['apiVersion'], obj['kind'], meta['namespace'])}/{quote(meta['name'])}"


def _ssl_context(info: kopf.ConnectionInfo) -> ssl.SSLContext | bool:
    if info.insecure:
        return False
    context = ssl.create_default_context(
        cafile=info.ca_path or None, cadata=_text(info.ca_data) if info.ca_data else None
    )
    if info.certificate_path or info.certificate_data:
        cert = info.certificate_path or _to_file(info.certificate_data)
        key = info.private_key_path or _to_file(info.private_key_data)
        context.load_cert_chain(cert, key)
    return context


def _text(data: str | bytes) -> str:
    raw = data if isinstance(data, bytes) else data.encode()
    try:
        return base64.b64decode(raw, validate=True).decode()
    except ValueError:
        return raw.decode()


def _to_file(data: str | bytes | None) -> str:
    handle = tempfile.NamedTemporaryFile("w", suffix=".pem", delete=False)  # noqa: SIM115
    handle.write(_text(data or b""))
    handle.close()
    return handle.name


_ZERO = (False, 0, "", None)
# How long an object we wrote or read counts as known without asking the API server again, for what
# the operator does not watch (the trainer ServiceAccount, a FineTuneJob's ConfigMap and rendezvous
# Service, API groups): one someone else changed or deleted is repaired within this time, as by a
# safety resync. Watched kinds (observe()) are known for as long as the watch runs.
KNOWN_TTL = 300.0


@dataclass
class _Known:
    obj: dict[str, Any]
    when: float
    watched: bool  # kept current by a watch: as good as a GET for as long as it lasts


def _version(obj: dict[str, Any]) -> int:
    try:
        return int(obj.get("metadata", {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


def _differs(want: Any, have: Any) -> bool:
    """True when ``want`` is not a subset of ``have`` (the server may add defaults we did not set,
    and drops zero values of omitempty fields: a ``readOnly: false`` we sent comes back absent)."""
    if have is None and (want in _ZERO or want == {} or want == []):
        return False
    if isinstance(want, dict):
        return not isinstance(have, dict) or any(_differs(v, have.get(k)) for k, v in want.items())
    if isinstance(want, list):
        return (
            not isinstance(have, list)
            or len(want) != len(have)
            or any(_differs(w, h) for w, h in zip(want, have, strict=True))
        )
    return bool(want != have)


class Kube:
    """Create-or-patch, get, list, logs and delete over plain HTTP."""

    def __init__(self, info: kopf.ConnectionInfo) -> None:
        self._server = info.server.rstrip("/")
        self._closed = False
        self._known: dict[str, _Known] = {}
        self._watched: set[tuple[str, str]] = set()  # (apiVersion, kind) whose changes observe() gets
        self._groups: dict[str, tuple[float, bool]] = {}
        headers = {"Accept": "application/json"}
        if info.token:
            headers["Authorization"] = f"Bearer {info.token}"
        auth = aiohttp.BasicAuth(info.username, info.password or "") if info.username else None
        context = _ssl_context(info)
        self._session = aiohttp.ClientSession(
            headers=headers,
            auth=auth,
            connector=aiohttp.TCPConnector(ssl=context),
            timeout=aiohttp.ClientTimeout(total=30),
        )
        # Followed pod logs are long-lived: a session of their own, so that they never take the
        # connections that reconciles need (aiohttp's default pool holds 100).
        self._streams = aiohttp.ClientSession(
            headers=headers,
            auth=auth,
            connector=aiohttp.TCPConnector(ssl=context, limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
        )

    async def close(self) -> None:
        self._closed = True
        await self._session.close()
        await self._streams.close()

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        content_type: str = "application/json",
        text: bool = False,
    ) -> Any:
        try:
            if self._closed:
                raise RuntimeError("Session is closed")
            headers = {"Content-Type": content_type} if json is not None else {}
            async with self._session.request(
                method, self._server + path, json=json, params=params, headers=headers
            ) as resp:
                if resp.status == 404:
                    return None
                if resp.status in _TRANSIENT or (resp.status == 409 and method == "PATCH"):
                    raise KubeBusy(
                        resp.status, (await resp.text())[:300], retry_delay(resp.headers.get("Retry-After"))
                    )
                if resp.status >= 400:
                    raise KubeError(resp.status, (await resp.text())[:500])
                return await resp.text() if text else await resp.json(content_type=None)
        except (aiohttp.ClientError, RuntimeError, TimeoutError) as err:
            if self._closed:
                # Kopf's cleanup can run while a timer is still mid-reconcile: retry later, not a crash.
                raise kopf.TemporaryError("the operator is shutting down", delay=1) from None
            if isinstance(err, TimeoutError):
                # An overloaded API server (or one in between) that did not answer in time.
                raise kopf.TemporaryError(f"no answer to {method} {path} in time", delay=2) from None
            if isinstance(err, aiohttp.ClientError):
                # A dropped connection (API server restart, load balancer): retry soon.
                raise kopf.TemporaryError(f"API server connection failed: {err}", delay=2) from None
            raise

    async def exists(self, path: str) -> bool:
        """Whether a GET of ``path`` answers (e.g. an API group such as monitoring.coreos.com/v1);
        asked again after KNOWN_TTL (a group installed later is seen within that time)."""
        now = time.monotonic()
        cached = self._groups.get(path)
        if cached is not None and cached[0] + KNOWN_TTL > now:
            return cached[1]
        try:
            found = await self._request("GET", path) is not None
        except KubeError:
            found = False
        self._groups[path] = (now, found)
        return found

    # -- what we know of our children without asking ------------------------------------------------
    def observe(self, obj: dict[str, Any], deleted: bool = False) -> None:
        """A watch event of a child: its newest state (or its deletion) is known from now on."""
        self._watched.add((obj["apiVersion"], obj["kind"]))
        if deleted:
            self._known.pop(object_path(obj), None)
            return
        self._remember(obj, watched=True)

    def forget(self, path: str) -> None:
        """The object at ``path`` is gone (its owner's watch said so)."""
        self._known.pop(path, None)

    async def peek(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        """The stored ``obj`` (the same kind, namespace and name), or None: from the watch for watched
        kinds (absent from it = absent), from what we know within KNOWN_TTL, else one GET. A watch
        filtered by label may not show an object of that kind that lacks the label: ``ensure`` then
        meets a 409 on its POST and reads the stored one, so it is still right, at two requests."""
        path = object_path(obj)
        current = self._current(path)
        if current is not None or (obj["apiVersion"], obj["kind"]) in self._watched:
            return current
        found = await self.get(path)
        if found is not None:
            self._remember(found)
        return found

    def _remember(self, obj: dict[str, Any], watched: bool = False) -> None:
        path, now = object_path(obj), time.monotonic()
        old = self._known.get(path)
        watched = watched or (old is not None and old.watched)
        if old is None or _version(obj) >= _version(old.obj):
            self._known[path] = _Known(obj, now, watched)
        else:  # a late watch event older than our own write: keep the write
            self._known[path] = _Known(old.obj, now, watched)

    def _current(self, path: str) -> dict[str, Any] | None:
        known = self._known.get(path)
        if known is None or not (known.watched or known.when + KNOWN_TTL > time.monotonic()):
            return None
        return known.obj

    async def get(self, path: str) -> dict[str, Any] | None:
        result = await self._request("GET", path)
        return result if isinstance(result, dict) else None

    async def list(self, collection: str, label_selector: str) -> list[dict[str, Any]]:
        result = await self._request("GET", collection, params={"labelSelector": label_selector})
        return list((result or {}).get("items", []))

    async def ensure(self, obj: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create ``obj`` if absent; return (current object, created). Never duplicates: names are fixed.
        A child known from a watch or from our own write within KNOWN_TTL costs no request."""
        existing = await self.peek(obj)
        if existing is not None:
            return existing, False
        created = await self.create(obj)  # a 409 (the watch lags our create) returns the stored one
        self._remember(created[0])
        return created

    async def create(self, obj: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """POST ``obj``; when it exists already (409), return the stored one: (object, created).
        For children the watch cache says are missing: one request where ``ensure`` needs two."""
        try:
            created = await self._request(
                "POST",
                collection_path(obj["apiVersion"], obj["kind"], obj["metadata"]["namespace"]),
                json=obj,
            )
        except KubeError as err:
            if err.status != 409:
                raise
            again = await self.get(object_path(obj))
            if again is None:
                raise
            return again, False
        return created, True

    async def apply(self, obj: dict[str, Any], fields: tuple[str, ...] = ("spec",)) -> dict[str, Any]:
        """Create ``obj``, or merge-patch the given top-level fields when they differ from it."""
        current, created = await self.ensure(obj)
        if created:
            return current
        changed = {f: obj[f] for f in fields if f in obj and _differs(obj[f], current.get(f))}
        if not changed:
            return current
        patched = await self.merge_patch(object_path(obj), changed)
        if patched is None:  # deleted meanwhile: known no more, created on the next pass
            self._known.pop(object_path(obj), None)
            return current
        self._remember(patched)
        return patched

    async def merge_patch(self, obj_path: str, patch: dict[str, Any]) -> dict[str, Any] | None:
        result = await self._request(
            "PATCH", obj_path, json=patch, content_type="application/merge-patch+json"
        )
        return result if isinstance(result, dict) else None

    async def delete(self, obj_path: str) -> None:
        self._known.pop(obj_path, None)
        await self._request("DELETE", obj_path, json={"propagationPolicy": "Background"})

    async def pod_log(self, namespace: str, pod: str, container: str, tail_lines: int) -> str:
        path = f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(pod)}/log"
        try:
            result = await self._request(
                "GET", path, params={"container": container, "tailLines": str(tail_lines)}, text=True
            )
        except (KubeError, KubeBusy):
            # A pod that has not started yet has no log, and a kubelet that cannot serve it now must
            # not hold up the reconcile: progress is read again on the next pass.
            return ""
        return result or ""

    async def follow_log(
        self, namespace: str, pod: str, container: str, tail_lines: int
    ) -> AsyncIterator[str]:
        """The pod's log lines as the kubelet writes them (``follow=true``), from the last
        ``tail_lines`` on, each prefixed with the kubelet's RFC 3339 timestamp and a space; ends when
        the container stops or the connection drops. Raises KubeError when the log cannot be read
        (the container has not started, no such pod)."""
        path = f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(pod)}/log"
        params = {"container": container, "tailLines": str(tail_lines), "follow": "true"}
        params["timestamps"] = "true"
        async with self._streams.get(self._server + path, params=params) as resp:
            if resp.status >= 400:
                raise KubeError(resp.status, (await resp.text())[:300])
            async for raw in resp.content:
                yield raw.decode("utf-8", "replace")
