"""Fixtures for integration tests: an emulated cluster that the real kubectl and the operator use.

``cluster`` (function scope) starts a fresh emulated API server with the namespace ``default``
and the CRDs from ``crds/``; see ``emulator/cluster.py`` for its helpers.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import pytest
from emulator import EmulatedCluster

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
def cluster(tmp_path: pathlib.Path) -> Iterator[EmulatedCluster]:
    """A started emulated cluster; fails the test if the server itself raised while serving."""
    with EmulatedCluster(workdir=tmp_path / "cluster", crd_dir=REPO_ROOT / "crds") as emulated:
        yield emulated
        assert not emulated.server_errors, f"the emulated API server failed: {emulated.server_errors!r}"


@pytest.fixture
def operator(cluster: EmulatedCluster, tmp_path: pathlib.Path) -> Iterator[Any]:
    """The real `kubetune operator` as a subprocess against ``cluster``; its log must show no traceback."""
    from test_operator_finetunejob import Operator

    op = Operator(cluster, tmp_path / "operator.log")
    op.start()
    yield op
    op.stop()
    assert "Traceback" not in op.logs(), op.logs()[-4000:]


@pytest.fixture
def metrics() -> Iterator[Any]:
    """Serving pods' metrics with values the test sets (a prometheus_client exporter on loopback)."""
    from test_operator_retraining import FakeServerMetrics

    fake = FakeServerMetrics()
    yield fake
    fake.close()


@pytest.fixture
def prometheus(tmp_path: pathlib.Path, metrics: Any) -> Iterator[Any]:
    """A real Prometheus scraping ``metrics`` every second."""
    from promserver import Prometheus

    with Prometheus(tmp_path / "prometheus", [f"127.0.0.1:{metrics.port}"]) as prom:
        yield prom
