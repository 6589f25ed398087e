"""The operator image installs only `.[operator]`: a fresh venv with exactly that must import every
operator module and start `kubetune operator`. CI installs all extras into one venv, which hides a
dependency missing from the extra (prometheus_client once crashed the operator image at start)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

IMPORT_ALL = """
import importlib, pkgutil, sys
import kubetune_operator
names = [m.name for m in pkgutil.walk_packages(kubetune_operator.__path__, "kubetune_operator.")]
for name in names:
    importlib.import_module(name)
assert "torch" not in sys.modules, "the operator imported torch"
print(len(names), "modules")
"""


def test_operator_extra_alone_imports_every_operator_module(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}

    def run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        # From an empty directory: nothing of the checkout is importable, only what was installed.
        return subprocess.run(
            [str(venv / "bin" / tool), *args], cwd=tmp_path, env=env, capture_output=True, text=True
        )

    install = run("pip", "install", "--quiet", f"{ROOT}[operator]")
    assert install.returncode == 0, install.stderr[-3000:]
    imported = run("python", "-c", IMPORT_ALL)
    assert imported.returncode == 0, imported.stderr[-3000:]
    assert int(imported.stdout.split()[0]) >= 10, imported.stdout
    help_ = run("kubetune", "operator", "--help")
    assert help_.returncode == 0, help_.stderr[-3000:]
    assert "--all-namespaces" in help_.stdout
    # The trainer's dependencies really are absent, so the imports above proved something.
    assert run("python", "-c", "import torch").returncode != 0
