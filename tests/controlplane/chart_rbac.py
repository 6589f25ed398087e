"""The chart's operator ServiceAccount and RBAC, rendered by `helm template` and applied as the chart
would install them, and a TokenRequest token for it: the operator runs with exactly those rights."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tools import helm

from .plane import ControlPlane

RELEASE = "kubetune"


def operator_token(plane: ControlPlane, chart: Path, namespace: str) -> str:
    """Install the chart's ServiceAccounts + RBAC (cluster mode) into ``namespace``; a 24 h token."""
    rendered = subprocess.run(
        [helm(), "template", RELEASE, str(chart), "--namespace", namespace, "--set", "crds.install=false",
         "--show-only", "templates/serviceaccounts.yaml", "--show-only", "templates/rbac.yaml"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    plane.kubectl("create", "namespace", namespace)
    plane.kubectl("apply", "-n", namespace, "-f", "-", input=rendered)
    return plane.kubectl("create", "token", RELEASE, "-n", namespace, "--duration=24h").stdout.strip()
