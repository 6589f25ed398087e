"""The test as kubelet and workload controllers: every Job and Deployment the operator creates in the
emulated cluster runs as a local process with the pod template's exact command, args and env.

Only paths and the port are rewritten: /etc/kubetune (and any other ConfigMap mount) becomes a temp
copy of the ConfigMap's data, /mnt/kubetune/pvc/<claim> a local folder per claim, /var/cache/kubetune
one cache shared by every pod (the MiniLM conversion happens once), /dev/termination-log a temp file
per pod; a serve config's `port` becomes the one port Prometheus scrapes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from emulator import EmulatedCluster

NS = "default"
BIN = Path(sys.executable).parent


@dataclass
class Pod:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    termination: Path


@dataclass
class Kubelet:
    cluster: EmulatedCluster
    root: Path
    pvc_root: Path
    server_port: int
    cache: Path = field(init=False)
    jobs_seen: set[str] = field(default_factory=set)
    jobs_done: dict[str, int] = field(default_factory=dict)  # job -> exit code
    job_pods: list[Pod] = field(default_factory=list)
    servers: dict[str, tuple[str, Pod]] = field(default_factory=dict)  # deployment -> (revision, pod)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _counter: int = 0

    def __post_init__(self) -> None:
        self.cache = self.root / "cache"
        self.cache.mkdir(parents=True, exist_ok=True)

    # ---- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> Kubelet:
        self._thread = threading.Thread(target=self._loop, daemon=True, name="test-kubelet")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        for pod in [*self.job_pods, *(p for _, p in self.servers.values())]:
            _terminate(pod.proc)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._sync_jobs()
                self._sync_deployments()
            except Exception as err:  # surfaced by the test, never swallowed
                self.errors.append(f"{type(err).__name__}: {err}")
            self._stop.wait(0.3)

    # ---- pods --------------------------------------------------------------------------------------
    def _mounts(self, spec: dict[str, Any], pod_dir: Path) -> dict[str, Path]:
        """mountPath -> local folder, filling ConfigMap copies."""
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        (container,) = spec["containers"]
        out: dict[str, Path] = {}
        for mount in container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            path = mount["mountPath"]
            if "configMap" in volume:
                local = pod_dir / "configmaps" / volume["configMap"]["name"]
                local.mkdir(parents=True, exist_ok=True)
                cm = self.cluster.get("configmaps", NS, volume["configMap"]["name"])
                assert cm is not None, f"ConfigMap {volume['configMap']['name']} missing"
                for key, text in (cm.get("data") or {}).items():
                    (local / key).write_text(text)
                out[path] = local
            elif "persistentVolumeClaim" in volume:
                out[path] = self.pvc_root / volume["persistentVolumeClaim"]["claimName"]
                out[path].mkdir(parents=True, exist_ok=True)
            elif path == "/var/cache/kubetune":
                out[path] = self.cache
        return out

    def run_pod(self, name: str, spec: dict[str, Any], port: int | None = None) -> Pod:
        self._counter += 1
        pod_dir = self.root / "pods" / f"{name}-{self._counter}"
        pod_dir.mkdir(parents=True)
        mounts = self._mounts(spec, pod_dir)
        termination = pod_dir / "termination-log"
        ordered = sorted(mounts.items(), key=lambda kv: -len(kv[0]))

        def local(text: str) -> str:
            for path, folder in ordered:
                text = text.replace(path, str(folder))
            return text.replace("/dev/termination-log", str(termination))

        for folder in mounts.values():  # the config files name mount paths too
            if "configmaps" in folder.parts:
                for file in folder.iterdir():
                    text = local(file.read_text())
                    if port is not None and file.suffix == ".yaml":
                        doc = yaml.safe_load(text)
                        if isinstance(doc, dict) and "port" in doc:
                            doc["port"], doc["host"] = port, "127.0.0.1"
                            text = yaml.safe_dump(doc)
                    file.write_text(text)
        (container,) = spec["containers"]
        env = {"PATH": f"{BIN}:/usr/bin:/bin", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2"}
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = local(item["value"])
        env["HOME"] = str(pod_dir)  # /tmp is an emptyDir in the pod
        command = [str(BIN / c) if (BIN / c).exists() else c for c in container["command"][:1]]
        argv = [*command, *container["command"][1:], *[local(a) for a in container.get("args", [])]]
        log = pod_dir / "stdout.log"
        proc = subprocess.Popen(argv, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=pod_dir)
        return Pod(f"{name}-{self._counter}", proc, log, termination)

    # ---- Jobs --------------------------------------------------------------------------------------
    def _sync_jobs(self) -> None:
        for job in self.cluster.list("jobs.batch", NS):
            name = job["metadata"]["name"]
            if name in self.jobs_seen or job["spec"].get("suspend"):
                continue
            self.jobs_seen.add(name)
            threading.Thread(target=self._run_job, args=(job,), daemon=True).start()

    def _run_job(self, job: dict[str, Any]) -> None:
        name = job["metadata"]["name"]
        try:
            template = job["spec"]["template"]
            pod = self.run_pod(name, template["spec"])
            self.job_pods.append(pod)
            obj = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": pod.name,
                    "namespace": NS,
                    "labels": {**template["metadata"].get("labels", {}), "job-name": name},
                    "ownerReferences": [
                        {
                            "apiVersion": "batch/v1",
                            "kind": "Job",
                            "name": name,
                            "uid": job["metadata"]["uid"],
                            "controller": True,
                        }
                    ],
                },
                "spec": template["spec"],
            }
            self.cluster.create(obj)
            started = _now()
            self.cluster.patch_status("pods", NS, pod.name, {"phase": "Running", "startTime": started})
            self.cluster.patch_status("jobs.batch", NS, name, {"active": 1, "startTime": started})
            code = pod.proc.wait()
            logs = pod.log.read_text(errors="replace")
            self.cluster.set_pod_log(NS, pod.name, logs)
            message = pod.termination.read_text() if pod.termination.is_file() else logs[-4096:]
            (container,) = template["spec"]["containers"]
            self.cluster.patch_status(
                "pods",
                NS,
                pod.name,
                {
                    "phase": "Succeeded" if code == 0 else "Failed",
                    "containerStatuses": [
                        {
                            "name": container["name"],
                            "state": {
                                "terminated": {
                                    "exitCode": code,
                                    "message": message,
                                    "finishedAt": _now(),
                                    "reason": "Completed" if code == 0 else "Error",
                                }
                            },
                        }
                    ],
                },
            )
            condition = {
                "type": "Complete" if code == 0 else "Failed",
                "status": "True",
                "reason": "Completed" if code == 0 else "BackoffLimitExceeded",
                "message": f"exit code {code}",
            }
            self.cluster.patch_status(
                "jobs.batch",
                NS,
                name,
                {
                    "active": 0,
                    "succeeded": int(code == 0),
                    "failed": int(code != 0),
                    "startTime": started,
                    "completionTime": _now(),
                    "conditions": [condition],
                },
            )
            self.jobs_done[name] = code
            if code != 0:
                self.errors.append(f"Job {name} exited {code}: {logs[-3000:]}")
        except Exception as err:
            self.errors.append(f"Job {name}: {type(err).__name__}: {err}")

    # ---- Deployments -------------------------------------------------------------------------------
    def _revision(self, dep: dict[str, Any]) -> str:
        """The template plus the ConfigMaps it mounts: either changing means new pods."""
        spec = dep["spec"]["template"]["spec"]
        cms = [
            self.cluster.get("configmaps", NS, v["configMap"]["name"])
            for v in spec.get("volumes", [])
            if "configMap" in v
        ]
        blob = json.dumps([dep["spec"]["template"], [(c or {}).get("data") for c in cms]], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _sync_deployments(self) -> None:
        for dep in self.cluster.list("deployments.apps", NS):
            name = dep["metadata"]["name"]
            if dep["spec"].get("replicas", 1) == 0:
                continue
            revision = self._revision(dep)
            current = self.servers.get(name)
            if current is not None and current[0] == revision:
                continue
            if current is not None:  # a rollout: the old pod goes, the new one starts on the same port
                _terminate(current[1].proc)
            pod = self.run_pod(name, dep["spec"]["template"]["spec"], port=self.server_port)
            self.servers[name] = (revision, pod)
            self._wait_ready(pod)
            self.cluster.patch_status(
                "deployments.apps",
                NS,
                name,
                {
                    "observedGeneration": dep["metadata"]["generation"],
                    "replicas": 1,
                    "updatedReplicas": 1,
                    "readyReplicas": 1,
                    "availableReplicas": 1,
                },
            )

    def _wait_ready(self, pod: Pod) -> None:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if pod.proc.poll() is not None:
                raise RuntimeError(f"server exited {pod.proc.returncode}: {pod.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not ready in 180 s: {pod.log.read_text()[-3000:]}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"

    def server_log(self, deployment: str) -> str:
        return (
            self.servers[deployment][1].log.read_text(errors="replace") if deployment in self.servers else ""
        )


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, dirs_exist_ok=True)
