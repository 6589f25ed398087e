"""``ControlPlane``: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok as local
processes, started once per test session (binaries from scripts/control-plane.sh).

The set-up is kubeadm's in miniature: serving certificates and service-account keys made here,
every component authenticated by a client certificate, ``--authorization-mode=Node,RBAC``, the
default admission plugins, the controller-manager with per-controller service-account credentials.
kwok runs the fake nodes (``kwok.fleet``) and serves pod logs through the real kubelet API.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from . import kwok
from .components import Component, ComponentFailed, free_port, http_ok, insecure_context
from .pki import CertificateAuthority, KeyPair, service_account_keys

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "control-plane.sh"
SERVICE_CIDR = "10.96.0.0/16"
FRONT_PROXY_CLIENT = "front-proxy-client"


def build_binaries() -> Path:
    """Run scripts/control-plane.sh (a no-op when the binaries are current) and return their folder."""
    out = subprocess.run(["bash", str(BUILD_SCRIPT)], check=True, stdout=subprocess.PIPE, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def kubeconfig(path: Path, server: str, ca: Path, user: dict[str, str], namespace: str = "default") -> Path:
    """Write a one-context kubeconfig for ``user`` (client-certificate or token entries)."""
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": "test", "cluster": {"server": server, "certificate-authority": str(ca)}}
                ],
                "users": [{"name": "user", "user": user}],
                "contexts": [
                    {"name": "test", "context": {"cluster": "test", "user": "user", "namespace": namespace}}
                ],
                "current-context": "test",
            }
        )
    )
    path.chmod(0o600)
    return path


def cert_user(pair: KeyPair) -> dict[str, str]:
    return {"client-certificate": str(pair.cert), "client-key": str(pair.key)}


class ControlPlane:
    """A started control plane; use as a context manager. ``admin_kubeconfig`` is system:masters."""

    def __init__(self, workdir: Path, cpu_nodes: int = 3, gpu_nodes: int = 3) -> None:
        self.workdir = workdir
        self.bin = build_binaries()
        self.logs = workdir / "logs"
        self.pki = workdir / "pki"
        self.nodes = kwok.fleet(cpu_nodes, gpu_nodes)
        self.components: list[Component] = []
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"

    # -- lifecycle ----------------------------------------------------------------------------------
    def __enter__(self) -> ControlPlane:
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            for step in self._steps():
                step()
        except BaseException:
            print(self.diagnostics())
            self.__exit__()
            raise
        return self

    def _steps(self) -> list[Callable[[], None]]:
        """The set-up, in order (``ExternalCluster`` brings its own API server and controllers)."""
        return [
            self._certificates,
            self._start_etcd,
            self._start_apiserver,
            self._start_controllers,
            self._start_kwok,
            self._wait_until_usable,
        ]

    def __exit__(self, *exc: object) -> None:
        for component in reversed(self.components):
            component.stop()

    def diagnostics(self, chars: int = 3000) -> str:
        """The tail of every component's log, for a failure report."""
        return "\n".join(f"----- {c.name} -----\n{c.tail(chars)}" for c in self.components)

    def failed_components(self) -> list[str]:
        return [c.name for c in self.components if not c.alive()]

    # -- set-up steps -------------------------------------------------------------------------------
    def _certificates(self) -> None:
        ca = self.ca = CertificateAuthority(self.pki)
        self.sa = service_account_keys(self.pki)
        self.serving = ca.issue(
            "apiserver",
            "kube-apiserver",
            server=True,
            hosts=(
                "127.0.0.1",
                "localhost",
                "10.96.0.1",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
        )
        self.kubelet_client = ca.issue(
            "apiserver-kubelet-client", "kube-apiserver-kubelet-client", ("kubeadm:cluster-admins",)
        )
        self.kwok_serving = ca.issue("kwok-serving", "kwok", server=True, hosts=("127.0.0.1", "localhost"))
        # The aggregation layer (kubeadm's front-proxy): kube-apiserver proxies an aggregated API
        # (custom.metrics.k8s.io: tests/controlplane/metrics_adapter.py) with this client certificate,
        # and the extension server trusts the X-Remote-* headers of requests signed by this CA only.
        self.front_proxy_ca = CertificateAuthority(self.pki / "front-proxy", "kubetune-test-front-proxy-ca")
        self.front_proxy_client = self.front_proxy_ca.issue("front-proxy-client", FRONT_PROXY_CLIENT)
        admin = ca.issue("admin", "kubernetes-admin", ("system:masters",))
        kcm = ca.issue("controller-manager", "system:kube-controller-manager")
        scheduler = ca.issue("scheduler", "system:kube-scheduler")
        self.admin_kubeconfig = kubeconfig(
            self.workdir / "admin.kubeconfig", self.url, ca.cert, cert_user(admin)
        )
        self.admin_cert = admin
        self.kcm_kubeconfig = kubeconfig(self.workdir / "kcm.kubeconfig", self.url, ca.cert, cert_user(kcm))
        self.scheduler_kubeconfig = kubeconfig(
            self.workdir / "scheduler.kubeconfig", self.url, ca.cert, cert_user(scheduler)
        )

    @property
    def api_url(self) -> str:
        """Where the tests' HTTP helpers reach the API server (with ``ssl_context()``)."""
        return self.url

    def kubeconfig_for(self, path: Path, namespace: str) -> Path:
        """An admin kubeconfig whose context defaults to ``namespace``."""
        return kubeconfig(path, self.url, self.ca.cert, cert_user(self.admin_cert), namespace)

    def token_kubeconfig(self, path: Path, token: str, namespace: str) -> Path:
        """A kubeconfig that authenticates with a ServiceAccount token."""
        return kubeconfig(path, self.url, self.ca.cert, {"token": token}, namespace)

    def ssl_context(self) -> ssl.SSLContext | None:
        """Verifies the API server against the test CA and presents the admin client certificate."""
        context = ssl.create_default_context(cafile=str(self.ca.cert))
        context.load_cert_chain(str(self.admin_cert.cert), str(self.admin_cert.key))
        return context

    def _start(self, name: str, argv: list[str], ready: Any, timeout: float = 120) -> Component:
        component = Component(name, argv, self.logs / f"{name}.log", ready)
        self.components.append(component)
        return component.start(timeout)

    def _start_etcd(self) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        self._start(
            "etcd",
            [
                str(self.bin / "etcd"),
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=default=http://127.0.0.1:{peer}",
                "--listen-metrics-urls=",
                # A test cluster needs no durability across a crash of the machine.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
            http_ok(f"{self.etcd_url}/health"),
        )

    def _start_apiserver(self) -> None:
        self._start(
            "kube-apiserver",
            [
                str(self.bin / "kube-apiserver"),
                f"--etcd-servers={self.etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.port}",
                f"--cert-dir={self.pki}",
                f"--tls-cert-file={self.serving.cert}",
                f"--tls-private-key-file={self.serving.key}",
                f"--client-ca-file={self.ca.cert}",
                f"--service-account-key-file={self.sa.cert}",
                f"--service-account-signing-key-file={self.sa.key}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=Node,RBAC",
                f"--kubelet-client-certificate={self.kubelet_client.cert}",
                f"--kubelet-client-key={self.kubelet_client.key}",
                "--kubelet-preferred-address-types=InternalIP",
                "--allow-privileged=true",
                # The aggregation layer, as kubeadm configures it (APIService -> extension API server).
                f"--requestheader-client-ca-file={self.front_proxy_ca.cert}",
                f"--requestheader-allowed-names={FRONT_PROXY_CLIENT}",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={self.front_proxy_client.cert}",
                f"--proxy-client-key-file={self.front_proxy_client.key}",
                "--v=1",
            ],
            http_ok(f"{self.url}/readyz", self.ssl_context()),
            timeout=180,
        )

    def _start_controllers(self) -> None:
        kcm_port, scheduler_port = free_port(), free_port()
        self._start(
            "kube-controller-manager",
            [
                str(self.bin / "kube-controller-manager"),
                f"--kubeconfig={self.kcm_kubeconfig}",
                f"--authentication-kubeconfig={self.kcm_kubeconfig}",
                f"--authorization-kubeconfig={self.kcm_kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={kcm_port}",
                f"--cert-dir={self.pki / 'kcm'}",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={self.sa.key}",
                f"--root-ca-file={self.ca.cert}",
                f"--cluster-signing-cert-file={self.ca.cert}",
                f"--cluster-signing-key-file={self.ca.key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # Every default controller (job, garbage collector, namespace, deployment,
                # replicaset, serviceaccount + token, PV binder, node lifecycle, ...).
                "--controllers=*",
                # Under a loaded CI machine kwok's lease heartbeats may lag: never mark fake nodes NotReady.
                "--node-monitor-grace-period=10m",
                # The HPA controller (part of --controllers=*) on a test's time scale: it reads the
                # metrics every 5 s and scales down after 15 s of low load (defaults: 15 s and 5 min).
                "--horizontal-pod-autoscaler-sync-period=5s",
                "--horizontal-pod-autoscaler-downscale-stabilization=15s",
                "--kube-api-qps=100",
                "--kube-api-burst=200",
                "--v=1",
            ],
            http_ok(f"https://127.0.0.1:{kcm_port}/healthz", insecure_context()),
        )
        self._start(
            "kube-scheduler",
            [
                str(self.bin / "kube-scheduler"),
                f"--kubeconfig={self.scheduler_kubeconfig}",
                f"--authentication-kubeconfig={self.scheduler_kubeconfig}",
                f"--authorization-kubeconfig={self.scheduler_kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={scheduler_port}",
                f"--cert-dir={self.pki / 'scheduler'}",
                "--leader-elect=false",
                "--v=1",
            ],
            http_ok(f"https://127.0.0.1:{scheduler_port}/healthz", insecure_context()),
        )

    def _start_kwok(self) -> None:
        self.kubectl("apply", "-f", str(self.bin / "kwok-crds"))
        self.wait_established()
        kwok_port, health = free_port(), free_port()
        config = self.workdir / "kwok.yaml"
        config.write_text(kwok.config(f"127.0.0.1:{health}"))
        self._start(
            "kwok",
            [
                str(self.bin / "kwok"),
                f"--kubeconfig={self.admin_kubeconfig}",
                f"--config={config}",
                f"--manage-nodes-with-annotation-selector={kwok.NODE_ANNOTATION}=fake",
                "--node-ip=127.0.0.1",
                f"--node-port={kwok_port}",
                f"--server-address=127.0.0.1:{kwok_port}",
                f"--tls-cert-file={self.kwok_serving.cert}",
                f"--tls-private-key-file={self.kwok_serving.key}",
                "--enable-crds=Logs,PortForward",
            ],
            http_ok(f"https://127.0.0.1:{kwok_port}/healthz", insecure_context()),
        )
        # Nodes a cluster of one's own (ExternalCluster) kept from an earlier run stay as they are.
        existing = {
            n["metadata"]["name"]
            for n in json.loads(self.kubectl("get", "nodes", "-o", "json").stdout)["items"]
        }
        for node in self.nodes:
            if node["metadata"]["name"] not in existing:
                self.kubectl("create", "-f", "-", input=json.dumps(node))

    def _wait_until_usable(self, timeout: float = 120) -> None:
        """Nodes Ready (kwok), the default ServiceAccount made (controller-manager is working)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.failed_components():
                raise ComponentFailed(f"exited: {self.failed_components()}")
            nodes = json.loads(self.kubectl("get", "nodes", "-o", "json").stdout)["items"]
            ready = [
                n
                for n in nodes
                if any(
                    c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions", [])
                )
            ]
            sa = self.kubectl("get", "serviceaccount", "default", "-n", "default", check=False)
            if len(ready) >= len(self.nodes) and sa.returncode == 0:
                return
            time.sleep(0.5)
        raise ComponentFailed("nodes not Ready or no default ServiceAccount in time")

    def wait_established(self, timeout: float = 60) -> None:
        """Every CRD Established (`kubectl wait` fails at once on a CRD that has no conditions yet)."""
        deadline = time.monotonic() + timeout
        while True:
            crds = json.loads(self.kubectl("get", "crd", "-o", "json").stdout)["items"]
            pending = [
                c["metadata"]["name"]
                for c in crds
                if not any(
                    x["type"] == "Established" and x["status"] == "True"
                    for x in c.get("status", {}).get("conditions") or []
                )
            ]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise ComponentFailed(f"CRDs not Established: {pending}")
            time.sleep(0.2)

    # -- kubectl as admin ---------------------------------------------------------------------------
    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        from tools import kubectl as kubectl_path

        result = subprocess.run(
            [kubectl_path(), f"--kubeconfig={self.admin_kubeconfig}", *args],
            capture_output=True,
            text=True,
            input=input,
            timeout=timeout,
            env={**os.environ, "KUBECONFIG": str(self.admin_kubeconfig)},
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result


def binaries_available() -> bool:
    """Go is here (the binaries can be built) or they are built already."""
    return shutil.which("go") is not None or Path("/usr/local/go/bin/go").exists()
