"""The e2e world: claims the pods mount, the test's kubelet, and a Prometheus scraping the servers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from controlplane import Cluster
from integration.ftj_helpers import bind_claims
from kubelet import Kubelet, copy_tree, scrape_kubelet_targets
from loop_helpers import ROOT
from operator_process import Operator
from promserver import Prometheus


@pytest.fixture
def world(
    cluster: Cluster, operator: Operator, tmp_path: Path
) -> Iterator[tuple[Operator, Kubelet, Prometheus]]:
    """The claims the pods mount (bound by the real PV controller; their contents are local folders),
    the test's kubelet, and a Prometheus scraping whatever server pods exist."""
    bind_claims(cluster)
    pvc = tmp_path / "pvc"
    copy_tree(ROOT / "examples" / "data", pvc / "kubetune-data")
    (pvc / "kubetune-output").mkdir(parents=True)
    kubelet = Kubelet(cluster, tmp_path / "kubelet", pvc).start()
    try:
        with Prometheus(tmp_path / "prometheus", []) as prom:
            scrape_kubelet_targets(prom, kubelet)
            yield operator, kubelet, prom
    finally:
        kubelet.stop()
