"""Fixtures for integration tests: an emulated cluster that the real kubectl and the operator use.

``cluster`` (function scope) starts a fresh emulated API server with the namespace ``default``
and the CRDs from ``crds/``; see ``emulator/cluster.py`` for its helpers.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest
from emulator import EmulatedCluster

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
def cluster(tmp_path: pathlib.Path) -> Iterator[EmulatedCluster]:
    """A started emulated cluster; fails the test if the server itself raised while serving."""
    with EmulatedCluster(workdir=tmp_path / "cluster", crd_dir=REPO_ROOT / "crds") as emulated:
        yield emulated
        assert not emulated.server_errors, f"the emulated API server failed: {emulated.server_errors!r}"
