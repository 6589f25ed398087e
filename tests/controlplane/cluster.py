"""``Cluster``: one test's view of the real control plane — its own namespace, a kubeconfig whose
context points there, the real kubectl, and small HTTP helpers that see exactly what kubectl and the
operator see (admission, status subresource, selectors, real garbage collection).

Besides what a user does, a test may do what a kubelet does (and nothing a controller does): report
how a pod ended (``finish_pod``), that its readiness probe passed (``set_pod_ready``), and what its
container printed (``set_pod_log``, served by kwok through the kubelet API to ``kubectl logs``).
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tools import kubectl as kubectl_path

from .external import ExternalCluster
from .plane import ControlPlane

T = TypeVar("T")


class HTTPError(Exception):
    """A non-2xx answer to a helper call; ``.status`` is the parsed ``Status`` body."""

    def __init__(self, code: int, status: dict[str, Any]) -> None:
        super().__init__(f"HTTP {code}: {status.get('message', status)}")
        self.code = code
        self.status = status


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...]


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Cluster:
    """The control plane as seen from one test namespace (``ns``)."""

    def __init__(self, plane: ControlPlane | ExternalCluster, namespace: str, workdir: Path) -> None:
        self.plane = plane
        self.ns = namespace
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.kubeconfig = plane.kubeconfig_for(workdir / "kubeconfig", namespace)
        self.kubectl_path = kubectl_path()
        self.url = plane.api_url
        self._context = plane.ssl_context()
        self._resources: list[Resource] | None = None

    @property
    def env(self) -> dict[str, str]:
        """Environment for a subprocess (kubectl, helm, the operator) that should use this cluster."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    # -- kubectl ------------------------------------------------------------------------------------
    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run the real kubectl in this test's namespace; ``check`` raises with its stderr on failure."""
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

    # -- discovery ----------------------------------------------------------------------------------
    def _discover(self) -> list[Resource]:
        found: list[Resource] = []
        versions = [("", "v1", "/api/v1")]
        for group in self.request("GET", "/apis")["groups"]:
            preferred = group["preferredVersion"]["version"]
            versions.append((group["name"], preferred, f"/apis/{group['name']}/{preferred}"))
        for group, version, path in versions:
            for r in self.request("GET", path)["resources"]:
                if "/" in r["name"]:
                    continue
                found.append(
                    Resource(
                        group,
                        version,
                        r["name"],
                        r.get("singularName") or r["kind"].lower(),
                        r["kind"],
                        r["namespaced"],
                        tuple(r.get("shortNames", ())),
                    )
                )
        return found

    def resolve(self, resource: str) -> Resource:
        """A resource by plural, singular, short name or kind, optionally ``.group``-qualified:
        ``ftj``, ``finetunejobs``, ``FineTuneJob``, ``jobs.batch``, ``events.events.k8s.io``."""
        name, _, group = resource.partition(".")
        for attempt in range(2):
            if self._resources is None or attempt:
                self._resources = self._discover()
            candidates = [
                r
                for r in self._resources
                if name.lower() in (r.plural, r.singular, r.kind.lower(), *r.short_names)
                and (not group or r.group == group)
            ]
            if candidates:
                # Like kubectl, prefer the core group, then the apps/batch groups over aggregated ones.
                return sorted(candidates, key=lambda r: r.group != "")[0]
        raise KeyError(f"unknown resource {resource!r}")

    def path(
        self,
        resource: str,
        namespace: str | None = None,
        name: str | None = None,
        subresource: str | None = None,
    ) -> str:
        r = self.resolve(resource)
        prefix = f"/apis/{r.group}/{r.version}" if r.group else f"/api/{r.version}"
        if r.namespaced and namespace:
            prefix += f"/namespaces/{namespace}"
        return "/".join([prefix, r.plural, *(p for p in (name, subresource) if p)])

    # -- HTTP ---------------------------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        params: dict[str, str] | None = None,
        timeout: float = 30,
    ) -> Any:
        """One HTTP call as the admin; JSON answer (text for logs), ``HTTPError`` for non-2xx."""
        url = self.url + path + (("?" + urllib.parse.urlencode(params)) if params else "")
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": content_type})
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self._context) as response:
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
        """Create ``obj`` (in this test's namespace unless it names one)."""
        api_version, kind = obj["apiVersion"], obj["kind"]
        group = api_version.split("/")[0] if "/" in api_version else ""
        r = self.resolve(f"{kind}.{group}" if group else kind)
        namespace = (
            namespace or obj.get("metadata", {}).get("namespace") or (self.ns if r.namespaced else None)
        )
        resource = f"{r.plural}.{r.group}" if r.group else r.plural
        return self.request("POST", self.path(resource, namespace), obj)

    def patch(
        self,
        resource: str,
        namespace: str | None,
        name: str,
        patch: dict[str, Any],
        content_type: str = "application/merge-patch+json",
    ) -> dict[str, Any]:
        """JSON merge patch of the main resource (``.status`` is ignored there, by the real server)."""
        return self.request("PATCH", self.path(resource, namespace, name), patch, content_type)

    def patch_status(
        self,
        resource: str,
        namespace: str | None,
        name: str,
        status: dict[str, Any],
        content_type: str = "application/merge-patch+json",
    ) -> dict[str, Any]:
        """Patch ``.status`` through the status subresource."""
        return self.request(
            "PATCH", self.path(resource, namespace, name, "status"), {"status": status}, content_type
        )

    def delete(
        self, resource: str, namespace: str | None, name: str, propagation: str = "Background"
    ) -> None:
        self.request("DELETE", self.path(resource, namespace, name), {"propagationPolicy": propagation})

    def events(self, namespace: str, involved_name: str | None = None) -> list[dict[str, Any]]:
        """Core v1 Events in ``namespace``, optionally only those about ``involved_name``."""
        selector = f"involvedObject.name={involved_name}" if involved_name else None
        return self.list("events", namespace, field_selector=selector)

    # -- the kubelet's part -------------------------------------------------------------------------
    def pods_of(self, job: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """The pods the real Job controller made for ``job``, oldest first."""
        pods = self.list("pods", namespace or self.ns, label_selector=f"batch.kubernetes.io/job-name={job}")
        return sorted(pods, key=lambda p: (p["metadata"]["creationTimestamp"], p["metadata"]["name"]))

    def wait_running(self, namespace: str, pod: str, timeout: float = 60) -> dict[str, Any]:
        """Wait until the pod is bound and kwok reports it Running (as a kubelet would)."""
        return self.wait_for(
            lambda: (
                (p := self.get("pods", namespace, pod)) is not None
                and p.get("status", {}).get("phase") == "Running"
                and p
            ),
            timeout=timeout,
            message=f"pod {pod} Running",
        )

    def finish_pod(
        self,
        namespace: str,
        pod: str,
        exit_code: int = 0,
        message: str = "",
        disrupted: bool = False,
    ) -> dict[str, Any]:
        """Report the pod's end as its kubelet would: every container terminated with ``exit_code``
        and the termination ``message``; ``disrupted`` adds the DisruptionTarget condition a
        preemption or eviction sets."""
        current = self.wait_running(namespace, pod)
        stamp = now()
        statuses = [
            {
                "name": c["name"],
                "image": c["image"],
                "ready": False,
                "started": False,
                "restartCount": 0,
                "state": {
                    "terminated": {
                        "exitCode": exit_code,
                        "reason": "Completed" if exit_code == 0 else "Error",
                        "message": message,
                        "startedAt": current["status"].get("startTime", stamp),
                        "finishedAt": stamp,
                    }
                },
            }
            for c in current["spec"]["containers"]
        ]
        conditions = [
            {"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": stamp},
            {
                "type": "ContainersReady",
                "status": "False",
                "reason": "PodCompleted",
                "lastTransitionTime": stamp,
            },
        ]
        if disrupted:
            conditions.append(
                {
                    "type": "DisruptionTarget",
                    "status": "True",
                    "reason": "PreemptionByScheduler",
                    "message": "preempted by a higher-priority pod",
                    "lastTransitionTime": stamp,
                }
            )
        return self.patch_status(
            "pods",
            namespace,
            pod,
            {
                "phase": "Succeeded" if exit_code == 0 else "Failed",
                "containerStatuses": statuses,
                "conditions": conditions,
            },
            content_type="application/strategic-merge-patch+json",
        )

    def set_pod_ready(self, namespace: str, pod: str, ready: bool = True) -> dict[str, Any]:
        """Report the pod's readiness probe result, as the kubelet's prober would."""
        current = self.wait_running(namespace, pod)
        stamp, flag = now(), "True" if ready else "False"
        return self.patch_status(
            "pods",
            namespace,
            pod,
            {
                "conditions": [
                    {"type": "Ready", "status": flag, "lastTransitionTime": stamp},
                    {"type": "ContainersReady", "status": flag, "lastTransitionTime": stamp},
                ],
                "containerStatuses": [
                    {"name": c["name"], "ready": ready} for c in current["spec"]["containers"]
                ],
            },
            content_type="application/strategic-merge-patch+json",
        )

    def set_pod_log(self, namespace: str, pod: str, text: str, container: str | None = None) -> None:
        """What ``kubectl logs`` shows for this pod: a CRI log file that kwok serves through the
        kubelet API (a kwok ``Logs`` object per pod points at it)."""
        folder = self.workdir / "pod-logs" / namespace / pod
        folder.mkdir(parents=True, exist_ok=True)
        log_file = folder / f"{container or 'all'}.log"
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        tmp = log_file.with_suffix(".tmp")
        tmp.write_text("".join(f"{stamp} stdout F {line}\n" for line in text.splitlines()))
        tmp.replace(log_file)
        entry: dict[str, Any] = {"logsFile": str(log_file), "follow": False}
        if container:
            entry["containers"] = [container]
        logs = {
            "apiVersion": "kwok.x-k8s.io/v1alpha1",
            "kind": "Logs",
            "metadata": {"name": pod, "namespace": namespace},
            "spec": {"logs": [entry]},
        }
        self.kubectl("apply", "-f", "-", input=json.dumps(logs))

    def set_pod_port_forward(self, namespace: str, pod: str, port: int, local_port: int) -> None:
        """Where ``kubectl port-forward`` to this pod's ``port`` lands: kwok's kubelet API tunnels it to
        127.0.0.1:``local_port`` (a kwok ``PortForward`` object per pod, like ``Logs``)."""
        forward = {
            "apiVersion": "kwok.x-k8s.io/v1alpha1",
            "kind": "PortForward",
            "metadata": {"name": pod, "namespace": namespace},
            "spec": {"forwards": [{"ports": [port], "target": {"port": local_port, "address": "127.0.0.1"}}]},
        }
        self.kubectl("apply", "-f", "-", input=json.dumps(forward))

    # -- waiting ------------------------------------------------------------------------------------
    @staticmethod
    def wait_for(
        predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.1, message: str = "condition"
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
