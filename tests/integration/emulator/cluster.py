"""``EmulatedCluster``: an ``ApiServer`` on 127.0.0.1 in a background thread, a kubeconfig for it,
and synchronous helpers for tests (the ``cluster`` fixture in ``tests/integration/conftest.py``).

The server runs on its own event loop in its own thread, so synchronous tests, the real
``kubectl`` and an operator (``kopf.testing.KopfRunner`` in another thread, or a subprocess with
``KUBECONFIG=cluster.kubeconfig``) all talk to it over real HTTP. The helpers use HTTP too, so
they see exactly what kubectl and the operator see (admission, status subresource, selectors).
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any, TypeVar

import yaml
from kmock._internal import apps

from .registry import CRD_RESOURCE, ResourceDef, load_crd_files
from .server import ApiServer

T = TypeVar("T")
REPO_ROOT = pathlib.Path(__file__).resolve().parents[3]


def find_kubectl() -> str:
    """/usr/bin/kubectl, else the repository's ``.tools/bin/kubectl``, else ``kubectl`` on PATH."""
    for candidate in (pathlib.Path("/usr/bin/kubectl"), REPO_ROOT / ".tools" / "bin" / "kubectl"):
        if candidate.exists():
            return str(candidate)
    found = shutil.which("kubectl")
    if found is None:
        raise FileNotFoundError("kubectl not found in /usr/bin, .tools/bin or PATH")
    return found


class HTTPError(Exception):
    """A non-2xx answer to a helper call; ``.status`` is the parsed ``Status`` body."""

    def __init__(self, code: int, status: dict[str, Any]) -> None:
        super().__init__(f"HTTP {code}: {status.get('message', status)}")
        self.code = code
        self.status = status


class EmulatedCluster:
    """A started emulated cluster; use as a context manager."""

    def __init__(
        self,
        workdir: pathlib.Path,
        crd_dir: pathlib.Path = REPO_ROOT / "crds",
        namespaces: tuple[str, ...] = ("default",),
    ) -> None:
        self.workdir = workdir
        self.crd_dir = crd_dir
        self.initial_namespaces = namespaces
        self.kubeconfig = workdir / "kubeconfig"
        self.kubectl_path = find_kubectl()
        self.server = ApiServer()
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def __enter__(self) -> EmulatedCluster:
        self.workdir.mkdir(parents=True, exist_ok=True)
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="emulated-apiserver", daemon=True
        )
        self._thread.start()
        if not ready.wait(10) or self._failure is not None:
            raise RuntimeError(f"the emulated API server did not start: {self._failure!r}")
        self._write_kubeconfig()
        for namespace in self.initial_namespaces:
            self.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        for crd in load_crd_files(self.crd_dir):
            self.create(crd)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stopped is not None:
            self.server.closing = True
            self._loop.call_soon_threadsafe(self._wake_and_stop)
        if self._thread is not None:
            self._thread.join(10)

    def _wake_and_stop(self) -> None:
        assert self._stopped is not None
        for waiter in self.server.store.waiters:
            waiter.set()
        self._stopped.set()

    def _run(self, ready: threading.Event) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stopped = asyncio.Event()
            async with self.server, apps.Server(self.server) as http:
                self.port = http.port
                ready.set()
                await self._stopped.wait()

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported by __enter__ or server_errors
            self._failure = exc
            ready.set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """Environment for a subprocess (kubectl, ``kubetune operator``) that should use this cluster."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    @property
    def server_errors(self) -> list[Exception]:
        """Exceptions raised inside the server while handling requests (bugs, not API errors)."""
        return list(self.server._errors[-1]) if self.server._errors else []

    def _write_kubeconfig(self) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "preferences": {},
            "clusters": [
                {"name": "emulated", "cluster": {"server": self.url, "insecure-skip-tls-verify": True}}
            ],
            "users": [{"name": "tester", "user": {"token": "emulated-token"}}],
            "contexts": [
                {
                    "name": "emulated",
                    "context": {"cluster": "emulated", "user": "tester", "namespace": "default"},
                }
            ],
            "current-context": "emulated",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config))

    def call_in_loop(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the server's loop (for direct access to ``server.store``) and return its result."""
        assert self._loop is not None

        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    # -- kubectl -------------------------------------------------------------------------------
    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """Run the real kubectl against this cluster; ``check`` raises with its stderr on failure."""
        cmd = [
            self.kubectl_path,
            f"--kubeconfig={self.kubeconfig}",
            f"--cache-dir={self.workdir / 'cache'}",
            *args,
        ]
        result = subprocess.run(
            cmd, capture_output=True, text=True, input=input, timeout=timeout, env=self.env
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    # -- HTTP helpers --------------------------------------------------------------------------
    def resolve(self, resource: str) -> ResourceDef:
        """A resource by plural, singular, short name or kind, optionally ``.group``-qualified:
        ``ftj``, ``finetunejobs``, ``FineTuneJob``, ``jobs.batch``, ``events.events.k8s.io``."""
        name, _, group = resource.partition(".")
        candidates = [
            r
            for r in self.server.registry.defs.values()
            if name.lower() in (r.plural, r.singular, r.kind.lower(), *r.short_names)
            and (not group or r.group == group)
        ]
        if not candidates:
            raise KeyError(f"unknown resource {resource!r}")
        # Like kubectl, prefer the core group, then the first registered.
        return sorted(candidates, key=lambda r: r.group != "")[0]

    def path(
        self,
        resource: str,
        namespace: str | None = None,
        name: str | None = None,
        subresource: str | None = None,
    ) -> str:
        rdef = self.resolve(resource)
        prefix = f"/apis/{rdef.group}/{rdef.version}" if rdef.group else f"/api/{rdef.version}"
        if rdef.namespaced and namespace:
            prefix += f"/namespaces/{namespace}"
        parts = [prefix, rdef.plural, *(p for p in (name, subresource) if p)]
        return "/".join(parts)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        params: dict[str, str] | None = None,
    ) -> Any:
        """One HTTP call; JSON answer (text for logs), ``HTTPError`` for non-2xx."""
        url = self.url + path + (("?" + urllib.parse.urlencode(params)) if params else "")
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": content_type})
        try:
            with urllib.request.urlopen(req, timeout=10) as response:
                text = response.read().decode()
                if response.headers.get_content_type() == "application/json" and text:
                    return json.loads(text)
                return text
        except urllib.error.HTTPError as exc:
            text = exc.read().decode()
            raise HTTPError(
                exc.code, json.loads(text) if text.startswith("{") else {"message": text}
            ) from None

    def get(self, resource: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            return self.request("GET", self.path(resource, namespace, name))
        except HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def list(
        self,
        resource: str,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[dict[str, Any]]:
        params = {
            k: v for k, v in (("labelSelector", label_selector), ("fieldSelector", field_selector)) if v
        }
        return self.request("GET", self.path(resource, namespace), params=params)["items"]

    def create(self, obj: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
        """Create ``obj``; a ``status`` in it is then written through the status subresource, as the
        controller that owns it would."""
        rdef = self.server.registry.by_kind(obj["apiVersion"], obj["kind"])
        if rdef is None:
            raise KeyError(f"unknown kind {obj['apiVersion']}/{obj['kind']}")
        namespace = (
            namespace or obj.get("metadata", {}).get("namespace") or ("default" if rdef.namespaced else None)
        )
        resource = f"{rdef.plural}.{rdef.group}" if rdef.group else rdef.plural
        created = self.request("POST", self.path(resource, namespace), obj)
        if "status" in obj and rdef.has_status and rdef.key != CRD_RESOURCE:
            created = self.patch_status(resource, namespace, created["metadata"]["name"], obj["status"])
        return created

    def patch(self, resource: str, namespace: str | None, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """JSON merge patch of the main resource (``.status`` is ignored there, as on a real server)."""
        return self.request(
            "PATCH", self.path(resource, namespace, name), patch, "application/merge-patch+json"
        )

    def patch_status(
        self, resource: str, namespace: str | None, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        """Merge-patch ``.status`` through the status subresource — the kubelet's or Job
        controller's part, e.g. ``patch_status("jobs.batch", "default", "x-train", {"succeeded": 1})``."""
        return self.request(
            "PATCH",
            self.path(resource, namespace, name, "status"),
            {"status": status},
            "application/merge-patch+json",
        )

    def delete(
        self, resource: str, namespace: str | None, name: str, propagation: str = "Background"
    ) -> None:
        self.request("DELETE", self.path(resource, namespace, name), {"propagationPolicy": propagation})

    def set_pod_log(self, namespace: str, pod: str, text: str, container: str | None = None) -> None:
        """What ``GET pods/<pod>/log`` (``kubectl logs``) returns for this pod (or one container)."""
        key = (namespace, pod, container) if container else (namespace, pod)
        self.call_in_loop(lambda: self.server.pod_logs.__setitem__(key, text))

    def events(self, namespace: str, involved_name: str | None = None) -> list[dict[str, Any]]:
        """Core v1 Events in ``namespace``, optionally only those about ``involved_name``."""
        selector = f"involvedObject.name={involved_name}" if involved_name else None
        return self.list("events", namespace, field_selector=selector)

    @staticmethod
    def wait_for(
        predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.05, message: str = "condition"
    ) -> T:
        """Poll ``predicate`` until it returns something truthy (returned); AssertionError after
        ``timeout`` seconds, naming ``message`` and the last value seen."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            last = predicate()
            if last:
                return last
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {message}; last value: {last!r}"
                )
            time.sleep(interval)
