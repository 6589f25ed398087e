"""The one place that runs kubectl: JSON reads, merge patches and log streams, with the global flags.

No Kubernetes client library: kubectl already knows the user's kubeconfig, auth plugins and proxies.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from kubetune.kubectl_plugin.args import GlobalFlags
from kubetune.kubectl_plugin.errors import KubectlFailed, KubectlMissing, NotFound

FTJ = "finetunejobs.kubetune.dev"
ADEP = "adapterdeployments.kubetune.dev"


def find_kubectl(environ: Mapping[str, str] | None = None) -> str:
    """``$KUBECTL``, else ``kubectl`` on PATH."""
    env = os.environ if environ is None else environ
    wanted = env.get("KUBECTL") or "kubectl"
    found = shutil.which(wanted, path=env.get("PATH"))
    if found is None:
        raise KubectlMissing(f"kubectl not found ({wanted!r}): install it or set KUBECTL to its path")
    return found


def error_line(stderr: str) -> str:
    """kubectl's own error line (``Error from server (NotFound): ...``), without warnings around it."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    line = next((line for line in lines if line.lower().startswith("error")), lines[-1] if lines else "")
    # "error: x" would print as "... error: error: x"; "Error from server (Forbidden): x" stays as it is.
    return line.removeprefix("error: ") or "kubectl failed without a message"


@dataclass(frozen=True)
class Kubectl:
    """kubectl with the user's connection flags."""

    binary: str
    flags: GlobalFlags

    def _command(self, args: list[str]) -> list[str]:
        return [self.binary, *args, *self.flags.kubectl_args()]

    def run(self, *args: str) -> str:
        """stdout of a kubectl call; ``KubectlFailed`` (``NotFound``) with its error line otherwise."""
        try:
            done = subprocess.run(self._command(list(args)), capture_output=True, text=True, check=False)
        except OSError as exc:
            raise KubectlMissing(f"cannot run {self.binary}: {exc.strerror}") from exc
        if done.returncode != 0:
            line = error_line(done.stderr)
            raise (NotFound if "(NotFound)" in line else KubectlFailed)(line)
        return done.stdout

    def get(self, resource: str, name: str) -> dict[str, Any]:
        """One object; ``NotFound`` when it does not exist."""
        return _json(self.run("get", resource, name, "-o", "json"))

    def find(self, resource: str, name: str) -> dict[str, Any] | None:
        """One object, or None when it does not exist."""
        try:
            return self.get(resource, name)
        except NotFound:
            return None

    def list(
        self, resource: str, selector: str | None = None, field_selector: str | None = None
    ) -> list[dict[str, Any]]:
        """Items of a list read; ``-A`` applies here when the user gave it."""
        args = ["get", resource, "-o", "json"]
        if selector:
            args.append(f"--selector={selector}")
        if field_selector:
            args.append(f"--field-selector={field_selector}")
        if self.flags.all_namespaces:
            args.append("--all-namespaces")
        items = _json(self.run(*args)).get("items")
        return list(items) if isinstance(items, list) else []

    def merge_patch(self, resource: str, name: str, patch: dict[str, Any]) -> None:
        self.run("patch", resource, name, "--type=merge", "-p", json.dumps(patch, separators=(",", ":")))

    def start(self, *args: str) -> subprocess.Popen[str]:
        """A long-running kubectl (``port-forward``) with piped text output; the caller ends it."""
        try:
            return subprocess.Popen(
                self._command(list(args)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        except OSError as exc:
            raise KubectlMissing(f"cannot run {self.binary}: {exc.strerror}") from exc

    def stream(self, *args: str) -> Iterator[str]:
        """Lines of a long-running kubectl call (``logs -f``) as they arrive."""
        try:
            proc = subprocess.Popen(
                self._command(list(args)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        except OSError as exc:
            raise KubectlMissing(f"cannot run {self.binary}: {exc.strerror}") from exc
        assert proc.stdout is not None and proc.stderr is not None
        try:
            yield from proc.stdout
        finally:
            if proc.poll() is None:
                proc.terminate()
            stderr = proc.stderr.read()
            code = proc.wait()
        if code in (-signal.SIGINT, 128 + signal.SIGINT):
            # Ctrl-C reaches kubectl too (same process group): when it dies first, the stream ends here
            # before Python raises KeyboardInterrupt; it is the same interruption, not a kubectl error.
            raise KeyboardInterrupt
        if code != 0 and code != -signal.SIGTERM:
            line = error_line(stderr)
            raise (NotFound if "(NotFound)" in line else KubectlFailed)(line)


def _json(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KubectlFailed(f"kubectl printed something that is not JSON: {text[:200]!r}") from exc
    if not isinstance(data, dict):
        raise KubectlFailed("kubectl printed JSON that is not an object")
    return data
