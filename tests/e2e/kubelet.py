"""The test's kubelet: runs, as local processes, the pods the real controllers made and the real
scheduler bound to kwok's nodes in the test's namespace — and does nothing a controller does.

The real Job controller makes the training pods and decides the Job's end by its podFailurePolicy;
the real deployment controller makes the serving pods and rolls them (maxSurge 1, maxUnavailable 0:
two serving pods coexist during a rollout). kwok marks a bound pod Running. This kubelet then:

- starts the pod's container with its exact command, args and env (``secretKeyRef`` values read from
  the Secret), rewriting only paths: /etc/kubetune
  (and any other ConfigMap mount) becomes a copy of the ConfigMap's data, /mnt/kubetune/pvc/<claim> a
  local folder per claim, /var/cache/kubetune one cache shared by every pod (the MiniLM conversion
  happens once), /dev/termination-log a file per pod; a pod with an HTTP readiness probe (a server)
  gets a port of its own, written into its serve config's ``port``;
- streams what the process prints into the pod log (``cluster.set_pod_log``: ``kubectl logs`` and the
  operator read it through kwok's kubelet API), rewritten as it grows, at most every LOG_EVERY seconds;
- reports a server Ready (``cluster.set_pod_ready``) once its /readyz probe answers 200 (again whenever
  the API shows it unready while the probe passes, as a kubelet's status sync does), and lists
  every running server in a Prometheus file_sd target file with its ``namespace`` and ``pod`` labels
  (what a PodMonitor would select);
- points each declared container port of a server at its local port (``cluster.set_pod_port_forward``),
  so ``kubectl port-forward`` through the API server and kwok's kubelet API reaches the process;
- reports how a process ended (``cluster.finish_pod``: exit code, termination message with the
  kubelet's FallbackToLogsOnError rule), and stops the process of a pod the API server deleted.

``service_urls`` plays kube-proxy: a Service's ready endpoints (the real EndpointSlice controller's
answer) mapped to the local ports of their pods.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import threading
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from controlplane import Cluster
from promserver import Prometheus, free_port

BIN = Path(sys.executable).parent
LOG_EVERY = 2.0  # seconds between pod-log rewrites while a process prints
# What a real kubelet puts in the termination message when the file is empty (FallbackToLogsOnError).
FALLBACK_LINES, FALLBACK_BYTES, MESSAGE_BYTES = 80, 2048, 4096


@dataclass
class LocalPod:
    name: str
    uid: str
    spec: dict[str, Any]
    workdir: Path
    port: int | None  # servers only
    proc: subprocess.Popen[bytes] | None = None
    ready: bool = False
    deleted: threading.Event = field(default_factory=threading.Event)

    @property
    def container(self) -> dict[str, Any]:
        (container,) = self.spec["containers"]
        return container

    @property
    def log(self) -> Path:
        return self.workdir / "stdout.log"

    @property
    def termination(self) -> Path:
        return self.workdir / "termination-log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.is_file() else ""


def _probe_path(spec: dict[str, Any]) -> str | None:
    (container,) = spec["containers"]
    return ((container.get("readinessProbe") or {}).get("httpGet") or {}).get("path")


@dataclass
class Kubelet:
    cluster: Cluster
    root: Path
    pvc_root: Path
    cache: Path = field(init=False)
    targets: Path = field(init=False)
    pods: dict[str, LocalPod] = field(default_factory=dict)  # uid -> pod
    errors: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.cache = self.root / "cache"
        self.cache.mkdir(parents=True, exist_ok=True)
        self.targets = self.root / "scrape-targets.json"
        self._write_targets()

    # ---- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> Kubelet:
        self._spawn(self._loop, "test-kubelet")
        return self

    def stop(self) -> None:
        self._stop.set()
        for pod in list(self.pods.values()):
            pod.deleted.set()
            _terminate(pod.proc)
        for thread in self._threads:
            thread.join(10)

    def _spawn(self, target: Any, name: str, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name=name)
        self._threads.append(thread)
        thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._sync()
            except Exception as err:  # surfaced by the test, never swallowed
                self.errors.append(f"kubelet sync: {type(err).__name__}: {err}")
            self._stop.wait(0.5)

    def _sync(self) -> None:
        """Start what was bound to a node, stop what the API server deleted."""
        seen: set[str] = set()
        for pod in self.cluster.list("pods", self.cluster.ns):
            meta, spec, status = pod["metadata"], pod["spec"], pod.get("status", {})
            uid = meta["uid"]
            if meta.get("deletionTimestamp"):
                continue
            seen.add(uid)
            if uid in self.pods or not spec.get("nodeName") or status.get("phase") in ("Succeeded", "Failed"):
                continue
            local = LocalPod(
                meta["name"],
                uid,
                spec,
                self.root / "pods" / meta["name"],
                free_port() if _probe_path(spec) else None,
            )
            self.pods[uid] = local
            self._spawn(self._run, f"pod-{meta['name']}", local)
        for uid, local in list(self.pods.items()):
            if uid not in seen:
                local.deleted.set()  # gone from the API (rollout, GC): its own thread stops the process

    # ---- one pod -----------------------------------------------------------------------------------
    def _run(self, pod: LocalPod) -> None:
        try:
            pod.proc = self._start_process(pod)
            if pod.port is not None:
                self._write_targets()
                for declared in pod.container.get("ports", []):  # kubectl port-forward reaches the process
                    self.cluster.set_pod_port_forward(
                        self.cluster.ns, pod.name, declared["containerPort"], pod.port
                    )
            code = self._supervise(pod)
            if pod.deleted.is_set():
                return  # deleted through the API: nobody is left to report to
            self._sync_log(pod)
            if pod.spec.get("restartPolicy") == "Always":
                self.errors.append(f"server pod {pod.name} exited {code}: {pod.output()[-3000:]}")
                return
            self.cluster.finish_pod(self.cluster.ns, pod.name, code, self._termination_message(pod, code))
            if code != 0:
                self.errors.append(f"pod {pod.name} exited {code}: {pod.output()[-3000:]}")
        except Exception as err:
            if not pod.deleted.is_set():
                self.errors.append(f"pod {pod.name}: {type(err).__name__}: {err}")
        finally:
            if pod.port is not None:
                self._write_targets()

    def _supervise(self, pod: LocalPod) -> int:
        """Until the process ends: the pod log as it grows, and the readiness probe until it passes."""
        assert pod.proc is not None
        logged = -1
        probe = _probe_path(pod.spec)
        while (code := pod.proc.poll()) is None:
            if pod.deleted.is_set():  # the API server let the pod go: SIGTERM, then SIGKILL after a grace
                self._write_targets()
                _terminate(pod.proc)
                continue
            size = pod.log.stat().st_size if pod.log.is_file() else 0
            if size != logged and not pod.deleted.is_set():
                logged = size
                self._sync_log(pod)
            passes = probe and not pod.deleted.is_set() and _probe(f"{pod.url}{probe}")
            if passes and not self._api_ready(pod):
                self.cluster.set_pod_ready(self.cluster.ns, pod.name)
                pod.ready = True
            pod.deleted.wait(LOG_EVERY)
        return code

    def _api_ready(self, pod: LocalPod) -> bool:
        """Whether the API shows the pod Ready (the node lifecycle controller unsets it while kwok's node
        heartbeat lags under load; a real kubelet's status sync sets it again, and so does this one)."""
        if not pod.ready:
            return False
        current = self.cluster.get("pods", self.cluster.ns, pod.name) or {}
        conditions = (current.get("status") or {}).get("conditions") or []
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

    def _sync_log(self, pod: LocalPod) -> None:
        try:
            self.cluster.set_pod_log(self.cluster.ns, pod.name, pod.output(), pod.container["name"])
        except AssertionError:
            if not pod.deleted.is_set():  # a pod deleted meanwhile takes its Logs with it
                raise

    def _termination_message(self, pod: LocalPod, code: int) -> str:
        message = pod.termination.read_bytes()[:MESSAGE_BYTES] if pod.termination.is_file() else b""
        policy = pod.container.get("terminationMessagePolicy", "File")
        if not message and code != 0 and policy == "FallbackToLogsOnError":
            tail = "\n".join(pod.output().splitlines()[-FALLBACK_LINES:])
            message = tail.encode()[-FALLBACK_BYTES:]
        return message.decode(errors="replace")

    # ---- the container -----------------------------------------------------------------------------
    def _mounts(self, pod: LocalPod) -> dict[str, Path]:
        """mountPath -> local folder, filling ConfigMap copies."""
        volumes = {v["name"]: v for v in pod.spec.get("volumes", [])}
        out: dict[str, Path] = {}
        for mount in pod.container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            path = mount["mountPath"]
            if "configMap" in volume:
                name = volume["configMap"]["name"]
                local = pod.workdir / "configmaps" / name
                local.mkdir(parents=True, exist_ok=True)
                cm = self.cluster.get("configmaps", self.cluster.ns, name)
                assert cm is not None, f"ConfigMap {name} missing"
                for key, text in (cm.get("data") or {}).items():
                    (local / key).write_text(text)
                out[path] = local
            elif "persistentVolumeClaim" in volume:
                out[path] = self.pvc_root / volume["persistentVolumeClaim"]["claimName"]
                out[path].mkdir(parents=True, exist_ok=True)
            elif path == "/var/cache/kubetune":
                out[path] = self.cache
        return out

    def _start_process(self, pod: LocalPod) -> subprocess.Popen[bytes]:
        pod.workdir.mkdir(parents=True)
        mounts = self._mounts(pod)
        ordered = sorted(mounts.items(), key=lambda kv: -len(kv[0]))

        def local(text: str) -> str:
            for path, folder in ordered:
                text = text.replace(path, str(folder))
            return text.replace("/dev/termination-log", str(pod.termination))

        for folder in mounts.values():  # the config files name mount paths too
            if "configmaps" in folder.parts:
                for file in folder.iterdir():
                    text = local(file.read_text())
                    if pod.port is not None and file.suffix == ".yaml":
                        doc = yaml.safe_load(text)
                        if isinstance(doc, dict) and "port" in doc:
                            doc["port"], doc["host"] = pod.port, "127.0.0.1"
                            text = yaml.safe_dump(doc)
                    file.write_text(text)
        container = pod.container
        env = {"PATH": f"{BIN}:/usr/bin:/bin", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2"}
        if os.environ.get("PYTHONPATH"):  # the pods run the same sources as the test (a worktree, say)
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = local(item["value"])
            elif ref := (item.get("valueFrom") or {}).get("secretKeyRef"):
                env[item["name"]] = self._secret_value(ref["name"], ref["key"])
        env["HOME"] = str(pod.workdir)  # /tmp is an emptyDir in the pod
        command = [str(BIN / c) if (BIN / c).exists() else c for c in container["command"][:1]]
        argv = [*command, *container["command"][1:], *[local(a) for a in container.get("args", [])]]
        with pod.log.open("wb") as out:
            return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=pod.workdir)

    def _secret_value(self, name: str, key: str) -> str:
        """An env var's ``secretKeyRef``, read from the Secret the way a kubelet does."""
        secret = self.cluster.get("secrets", self.cluster.ns, name)
        assert secret is not None and key in (secret.get("data") or {}), f"secret {name} has no key {key}"
        return base64.b64decode(secret["data"][key]).decode()

    # ---- what Prometheus and clients see -----------------------------------------------------------
    def _write_targets(self) -> None:
        """file_sd targets: every server process that runs for a pod still in the API."""
        with self._lock:
            groups = [
                {"targets": [f"127.0.0.1:{p.port}"], "labels": {"namespace": self.cluster.ns, "pod": p.name}}
                for p in list(self.pods.values())
                if p.port is not None
                and p.proc is not None
                and p.proc.poll() is None
                and not p.deleted.is_set()
            ]
            tmp = self.targets.with_suffix(".tmp")
            tmp.write_text(json.dumps(groups))
            tmp.replace(self.targets)

    def service_urls(self, service: str) -> list[str]:
        """kube-proxy's view: the local URL of every ready endpoint of ``service``."""
        slices = self.cluster.list(
            "endpointslices.discovery.k8s.io",
            self.cluster.ns,
            label_selector=f"kubernetes.io/service-name={service}",
        )
        by_name = {
            p.name: p for p in list(self.pods.values()) if p.port is not None and not p.deleted.is_set()
        }
        return [
            by_name[ep["targetRef"]["name"]].url
            for s in slices
            for ep in s.get("endpoints") or []
            if (ep.get("conditions") or {}).get("ready")
            and (ep.get("targetRef") or {}).get("name") in by_name
        ]

    def server_log(self, prefix: str) -> str:
        """The output of the newest server pod whose name starts with ``prefix``."""
        servers = [p for p in list(self.pods.values()) if p.port is not None and p.name.startswith(prefix)]
        return servers[-1].output() if servers else ""


def scrape_kubelet_targets(prom: Prometheus, kubelet: Kubelet) -> None:
    """Point a running Prometheus at the kubelet's file_sd target list and reload it (the real
    ``/-/reload`` lifecycle API): it then scrapes the servers of the pods that exist, as a PodMonitor
    would, and marks a deleted pod's series stale."""
    config_file = prom.workdir / "prometheus.yml"
    config = yaml.safe_load(config_file.read_text())
    config["scrape_configs"] = [
        {
            "job_name": "kubetune",
            "file_sd_configs": [{"files": [str(kubelet.targets)], "refresh_interval": "1s"}],
        }
    ]
    config_file.write_text(yaml.safe_dump(config))
    request = urllib.request.Request(f"{prom.url}/-/reload", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200, response.status


def _probe(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _terminate(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, dirs_exist_ok=True)
