"""Kubectl.stream's endings with a real child process standing in for kubectl: Ctrl-C reaching the
child first is an interruption (exit 130 upstream), not a kubectl error; a failing child is one."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from kubetune.kubectl_plugin.args import GlobalFlags
from kubetune.kubectl_plugin.errors import KubectlFailed
from kubetune.kubectl_plugin.kubectl import Kubectl


def fake_kubectl(tmp_path: Path, body: str) -> Kubectl:
    script = tmp_path / "kubectl"
    script.write_text(f"#!{sys.executable}\nimport os, signal, sys\nprint('step 1', flush=True)\n{body}\n")
    script.chmod(0o755)
    return Kubectl(str(script), GlobalFlags())


def test_a_child_killed_by_ctrl_c_ends_the_stream_as_an_interruption(tmp_path: Path) -> None:
    kubectl = fake_kubectl(
        tmp_path, "signal.signal(signal.SIGINT, signal.SIG_DFL)\nos.kill(os.getpid(), signal.SIGINT)"
    )
    lines = []
    with pytest.raises(KeyboardInterrupt):
        for line in kubectl.stream("logs", "-f", "x"):
            lines.append(line)
    assert lines == ["step 1\n"]


def test_a_failing_child_is_a_kubectl_error_with_its_line(tmp_path: Path) -> None:
    kubectl = fake_kubectl(tmp_path, "print('error: pods \"x\" not ready', file=sys.stderr)\nsys.exit(1)")
    with pytest.raises(KubectlFailed, match='pods "x" not ready'):
        list(kubectl.stream("logs", "x"))
    assert list(fake_kubectl(tmp_path, "sys.exit(0)").stream("logs", "x")) == ["step 1\n"]
