"""Paths of the CLI tools the tests drive (helm, kubectl, hadolint).

They live in `.tools/bin/`, filled by `scripts/tools.sh` from PyPI packages of the `test` extra;
this helper runs the script once per session (it is idempotent and fast when already done).
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TOOLS_SCRIPT = REPO_ROOT / "scripts" / "tools.sh"


@functools.cache
def tools_bin() -> Path:
    """Run scripts/tools.sh and return the directory it filled."""
    out = subprocess.run(["bash", str(TOOLS_SCRIPT)], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def tool(name: str) -> str:
    """Absolute path of one tool; fails loudly when scripts/tools.sh did not provide it."""
    path = tools_bin() / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing after scripts/tools.sh; is the `test` extra installed?")
    return str(path)


def helm() -> str:
    return tool("helm")


def kubectl() -> str:
    return tool("kubectl")


def hadolint() -> str:
    return tool("hadolint")
