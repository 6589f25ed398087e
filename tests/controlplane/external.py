"""``ExternalCluster``: the same fixtures against a cluster of your own (``make test-cluster`` with
``KUBECONFIG=...``, e.g. kind), instead of the control plane the tests start themselves.

The cluster brings its own API server, controllers and scheduler; the tests still run kwok locally
(fake nodes, the pod stages of ``kwok.py``) and reach the API through ``kubectl proxy``, so nothing
is assumed about its authentication. Pod logs set by tests (``Cluster.set_pod_log``) are served by
the local kwok, which the cluster's API server can reach only when it runs on this machine.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Callable
from pathlib import Path

import yaml

from .pki import CertificateAuthority
from .plane import ControlPlane


class ExternalCluster(ControlPlane):
    """A context manager like ``ControlPlane``; ``admin_kubeconfig`` is the user's kubeconfig."""

    def __init__(self, user_kubeconfig: Path, workdir: Path) -> None:
        super().__init__(workdir)
        self.admin_kubeconfig = user_kubeconfig
        config = yaml.safe_load(user_kubeconfig.read_text())
        context = next(c for c in config["contexts"] if c["name"] == config["current-context"])["context"]
        self._cluster_entry = next(c for c in config["clusters"] if c["name"] == context["cluster"])[
            "cluster"
        ]
        self.url = self._cluster_entry["server"]
        self._proxy_url = ""

    def _steps(self) -> list[Callable[[], None]]:
        return [self._kwok_certificate, self._start_proxy, self._start_kwok, self._wait_until_usable]

    def _kwok_certificate(self) -> None:
        ca = CertificateAuthority(self.pki)
        self.kwok_serving = ca.issue("kwok-serving", "kwok", server=True, hosts=("127.0.0.1", "localhost"))

    def _start_proxy(self) -> None:
        from tools import kubectl

        log = self.logs / "kubectl-proxy.log"

        def serving() -> bool:
            found = re.search(
                r"Starting to serve on 127\.0\.0\.1:(\d+)", log.read_text() if log.exists() else ""
            )
            if found:
                self._proxy_url = f"http://127.0.0.1:{found.group(1)}"
            return bool(found)

        self._start(
            "kubectl-proxy",
            [kubectl(), f"--kubeconfig={self.admin_kubeconfig}", "proxy", "--port=0", "--address=127.0.0.1"],
            serving,
        )

    @property
    def api_url(self) -> str:
        return self._proxy_url

    def ssl_context(self) -> ssl.SSLContext | None:  # type: ignore[override]
        return None  # plain HTTP to kubectl proxy on loopback

    def kubeconfig_for(self, path: Path, namespace: str) -> Path:
        config = yaml.safe_load(self.admin_kubeconfig.read_text())
        for entry in config["contexts"]:
            if entry["name"] == config["current-context"]:
                entry["context"]["namespace"] = namespace
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    def token_kubeconfig(self, path: Path, token: str, namespace: str) -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": self._cluster_entry}],
            "users": [{"name": "user", "user": {"token": token}}],
            "contexts": [
                {"name": "test", "context": {"cluster": "test", "user": "user", "namespace": namespace}}
            ],
            "current-context": "test",
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path
