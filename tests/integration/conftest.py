"""Fixtures for integration tests. The real control plane (``cluster``, ``operator``) comes from
tests/conftest.py; here: serving pods' metrics the test controls and a real Prometheus scraping them.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import pytest


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
