"""Entry point of the kubectl-kubetune console script (filled in by the plugin module)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("kubectl kubetune: not built yet", file=sys.stderr)
    return 1
