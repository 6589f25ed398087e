"""The hostile and careless corpus (tests/data/bad) against the real kube-apiserver: each manifest is
refused by ``kubectl apply`` with the message its ``# expect:`` lines name, and nothing is stored.
tests/unit/test_bad_corpus.py checks the same corpus offline against the same CRDs."""

from __future__ import annotations

import pathlib

import pytest
import yaml
from controlplane import Cluster

CORPUS = sorted((pathlib.Path(__file__).resolve().parents[1] / "data" / "bad").glob("*.yaml"))
SHORT_NAMES = {"FineTuneJob": "ftj", "AdapterDeployment": "adep"}


def expected_messages(path: pathlib.Path) -> list[str]:
    return [
        line.removeprefix("# expect: ")
        for line in path.read_text().splitlines()
        if line.startswith("# expect: ")
    ]


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_api_server_refuses_the_manifest_with_its_message(cluster: Cluster, path: pathlib.Path) -> None:
    doc = yaml.safe_load(path.read_text())

    result = cluster.kubectl("apply", "-f", str(path), check=False)

    assert result.returncode != 0, result.stdout
    for message in expected_messages(path):
        assert message in result.stderr, result.stderr
    assert cluster.get(SHORT_NAMES[doc["kind"]], cluster.ns, doc["metadata"]["name"]) is None
