"""The real operator (`kubetune operator --standalone -n <namespace>`) as a subprocess.

It authenticates with a token of the chart's own ServiceAccount (``operator_kubeconfig`` in
tests/conftest.py), so every test also checks that the chart's RBAC is enough: a 403 in its log
fails the test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAINER_IMAGE = "registry.example/trainer:1.2.3"
SERVER_IMAGE = "registry.example/server:1.2.3"


class Operator:
    """Start/stop like a pod restart; ``logs()`` is everything it printed."""

    def __init__(
        self,
        kubeconfig: Path,
        namespace: str,
        log_path: Path,
        extra_env: dict[str, str] | None = None,
        standalone: bool = True,
        args: tuple[str, ...] = (),
    ) -> None:
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.log_path = log_path
        self.extra_env = extra_env or {}
        # Standalone: no peering (one replica). Without it, one of several replicas, Kopf's peering
        # electing the active one (the chart's Deployment with replicas > 1).
        self.standalone = standalone
        self.args = args  # more `kubetune operator` flags (--peering, --trainer-image, ...)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            # FineTuneJobs: no fast resync, so the tests show that watches drive the operator. The
            # AdapterDeployment timed checks (canary pauses, triggers) tick fast; a log stream that
            # kwok refuses before the test wrote a log (a kubelet would hold it open) reopens soon.
            "KUBETUNE_ADAPTER_RESYNC_SECONDS": "0.3",
            "KUBETUNE_PROGRESS_SECONDS": "0.5",
            "KUBETUNE_LOG_REOPEN_MAX_SECONDS": "2",
            "KUBETUNE_METRICS_PORT": "0",
            "KUBETUNE_LIVENESS_PORT": "0",
            "KUBETUNE_TRAINER_IMAGE": TRAINER_IMAGE,
            "KUBETUNE_SERVER_IMAGE": SERVER_IMAGE,
            **self.extra_env,
        }
        log = self.log_path.open("ab")
        standalone = ["--standalone"] if self.standalone else []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kubetune.cli", "operator", *standalone, "-n", self.namespace, *self.args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL, as the OOM killer or a node loss would end it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
