"""``MetricsAdapter``: the real prometheus-adapter (built by scripts/prometheus-adapter.sh) as a local
process serving ``custom.metrics.k8s.io`` through the control plane's aggregation layer, from a real
Prometheus. The HorizontalPodAutoscaler controller in kube-controller-manager reads Pods metrics
through it exactly as in a cluster.

Set up as the adapter's own manifests do: an identity of its own (a client certificate) with
``system:auth-delegator``, ``extension-apiserver-authentication-reader`` and read access to what it
maps series to; a serving certificate for ``<service>.<namespace>.svc`` (the name kube-apiserver
verifies) whose CA is the APIService's ``caBundle``. Endpoints cannot hold a loopback address, so the
Service is of type ExternalName ``localhost``: kube-apiserver resolves an ExternalName APIService
Service to ``https://<externalName>:<port>`` (no ``--enable-aggregator-routing``).

The APIServices are removed again on exit: an unavailable aggregated API would fail every client's
discovery and block namespace deletion for the tests after this one.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from .components import Component, free_port, http_ok, insecure_context
from .plane import REPO_ROOT, ControlPlane, cert_user, kubeconfig

BUILD_SCRIPT = REPO_ROOT / "scripts" / "prometheus-adapter.sh"
NAMESPACE = "custom-metrics"
SERVICE = "prometheus-adapter"
USER = "kubetune-metrics-adapter"
VERSIONS = ("v1beta1", "v1beta2")


def build_adapter() -> Path:
    """Run scripts/prometheus-adapter.sh (a no-op when current) and return the ``adapter`` binary."""
    out = subprocess.run(["bash", str(BUILD_SCRIPT)], check=True, stdout=subprocess.PIPE, text=True)
    return Path(out.stdout.strip().splitlines()[-1]) / "adapter"


def pods_rule(metric: str) -> dict[str, object]:
    """A prometheus-adapter rule serving ``metric`` per pod: its series' ``namespace`` and ``pod``
    labels (as a PodMonitor's relabelling sets them) name the pod, and its value is summed per pod.
    The rule docs/autoscaling.md gives for a cluster."""
    return {
        "seriesQuery": f'{metric}{{namespace!="",pod!=""}}',
        "resources": {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}},
        "name": {"as": metric},
        "metricsQuery": "sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)",
    }


def rbac() -> list[dict[str, object]]:
    """What prometheus-adapter's own deployment manifests grant it."""
    subject = [{"kind": "User", "name": USER, "apiGroup": "rbac.authorization.k8s.io"}]

    def ref(kind: str, name: str) -> dict[str, str]:
        return {"kind": kind, "name": name, "apiGroup": "rbac.authorization.k8s.io"}

    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": f"{USER}:resource-reader"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["namespaces", "pods", "services", "nodes"],
                    "verbs": ["get", "list", "watch"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": f"{USER}:resource-reader"},
            "roleRef": ref("ClusterRole", f"{USER}:resource-reader"),
            "subjects": subject,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": f"{USER}:system:auth-delegator"},
            "roleRef": ref("ClusterRole", "system:auth-delegator"),
            "subjects": subject,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": f"{USER}:auth-reader", "namespace": "kube-system"},
            "roleRef": ref("Role", "extension-apiserver-authentication-reader"),
            "subjects": subject,
        },
    ]


def registration(port: int, ca_bundle: bytes) -> list[dict[str, object]]:
    """The ExternalName Service and one APIService per custom.metrics.k8s.io version."""
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": SERVICE, "namespace": NAMESPACE},
        "spec": {"type": "ExternalName", "externalName": "localhost"},
    }
    return [
        service,
        *(
            {
                "apiVersion": "apiregistration.k8s.io/v1",
                "kind": "APIService",
                "metadata": {"name": f"{version}.custom.metrics.k8s.io"},
                "spec": {
                    "group": "custom.metrics.k8s.io",
                    "version": version,
                    "service": {"namespace": NAMESPACE, "name": SERVICE, "port": port},
                    "caBundle": base64.b64encode(ca_bundle).decode(),
                    "groupPriorityMinimum": 100,
                    "versionPriority": 100 + i,
                },
            }
            for i, version in enumerate(VERSIONS)
        ),
    ]


def _list(docs: list[dict[str, object]]) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})


class MetricsAdapter:
    """prometheus-adapter for ``plane``, reading ``prometheus_url`` with ``rules``; a context manager
    that returns once both APIServices are Available."""

    def __init__(
        self, plane: ControlPlane, prometheus_url: str, rules: list[dict[str, object]], workdir: Path
    ) -> None:
        self.plane = plane
        self.prometheus_url = prometheus_url
        self.rules = rules
        self.workdir = workdir
        self.port = free_port()
        self.component: Component | None = None

    def __enter__(self) -> MetricsAdapter:
        binary = build_adapter()
        self.workdir.mkdir(parents=True, exist_ok=True)
        ca = self.plane.ca
        client = ca.issue("metrics-adapter-client", USER)
        serving = ca.issue(
            "metrics-adapter-serving",
            SERVICE,
            server=True,
            hosts=(f"{SERVICE}.{NAMESPACE}.svc", "localhost", "127.0.0.1"),
        )
        config = kubeconfig(self.workdir / "kubeconfig", self.plane.url, ca.cert, cert_user(client))
        (self.workdir / "rules.yaml").write_text(yaml.safe_dump({"rules": self.rules}))
        self.plane.kubectl("apply", "-f", "-", input=_list(rbac()))
        self.component = Component(
            "prometheus-adapter",
            [
                str(binary),
                f"--lister-kubeconfig={config}",
                f"--authentication-kubeconfig={config}",
                f"--authorization-kubeconfig={config}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.port}",
                f"--tls-cert-file={serving.cert}",
                f"--tls-private-key-file={serving.key}",
                f"--prometheus-url={self.prometheus_url}",
                f"--config={self.workdir / 'rules.yaml'}",
                # New series (a pod's first request) are seen within seconds, not the default minute.
                "--metrics-relist-interval=2s",
                "--v=1",
            ],
            self.workdir / "prometheus-adapter.log",
            http_ok(f"https://127.0.0.1:{self.port}/healthz", insecure_context()),
        )
        try:
            self.component.start(timeout=60)
            self.plane.kubectl("apply", "-f", "-", input=_list(registration(self.port, ca.cert.read_bytes())))
            self._wait_available()
        except BaseException:
            print(self.component.tail())
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        names = [f"apiservice/{v}.custom.metrics.k8s.io" for v in VERSIONS]
        self.plane.kubectl("delete", "--ignore-not-found", "--wait=true", *names, check=False)
        if self.component is not None:
            self.component.stop()

    def _wait_available(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            pending = []
            for version in VERSIONS:
                found = self.plane.kubectl(
                    "get", "apiservice", f"{version}.custom.metrics.k8s.io", "-o", "json"
                )
                conditions = json.loads(found.stdout).get("status", {}).get("conditions") or []
                if not any(c["type"] == "Available" and c["status"] == "True" for c in conditions):
                    pending.append((version, conditions))
            if not pending:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"custom.metrics.k8s.io not Available: {pending}")
            time.sleep(0.5)

    def raw(self, path: str) -> dict[str, Any] | None:
        """``kubectl get --raw`` of ``/apis/custom.metrics.k8s.io/v1beta2`` + ``path``, as admin; None
        while the adapter answers an error (a metric no series has shown yet is not found)."""
        out = self.plane.kubectl("get", "--raw", f"/apis/custom.metrics.k8s.io/v1beta2{path}", check=False)
        return dict(json.loads(out.stdout)) if out.returncode == 0 else None

    def tail(self, chars: int = 3000) -> str:
        return self.component.tail(chars) if self.component else "(not started)"
