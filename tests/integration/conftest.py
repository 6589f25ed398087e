"""Fixtures for integration tests. The real control plane (``cluster``, ``operator``) comes from
tests/conftest.py; here: serving pods' metrics the test controls, a real Prometheus scraping them,
and the fault proxy (counting every request) in front of the API server.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import pytest
from controlplane import Cluster
from controlplane.faultproxy import FaultProxy


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


@pytest.fixture
def proxy(cluster: Cluster) -> Iterator[FaultProxy]:
    """The fault proxy in front of this test's API server (no faults until a test injects one)."""
    with FaultProxy(cluster.plane.url, cluster.plane.ca.cert) as running:
        yield running
