"""A server serves a version only with the weights it was recorded with: an adapter folder whose
weights changed since (overwritten by a re-run, tampered with) is refused at start-up (/readyz says
why, the log names both digests) and by the hot-load admin API. Real MiniLM, real adapters."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from kubetune_trainer.artifacts import adapter_digest
from kubetune_trainer.serve.adapters import WEIGHTS
from kubetune_trainer.serve.app import create_app
from kubetune_trainer.serve.config import AdapterSpec, ServeConfig
from kubetune_trainer.serve.main import DrainingServer
from test_serve_helpers import (
    ADMIN_TOKEN,
    LABELS,
    MINILM,
    admin_config,
    error_of,
    make_adapters,
    running_server,
    wait_for,
)

AUTH = {"authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Run 1's adapter, run 2's adapter, and run 1's folder after run 2 wrote over it (the bug: one
    path for two versions)."""
    made = make_adapters(
        MINILM, "sequence-classification", tmp_path_factory.mktemp("digest"), {"run1": 1, "run2": 2}, LABELS
    )
    overwritten = made["run1"].parent / "overwritten"
    shutil.copytree(made["run1"], overwritten)
    shutil.copyfile(made["run2"] / WEIGHTS, overwritten / WEIGHTS)
    return {**made, "overwritten": overwritten}


def digest(folder: Path) -> str:
    return adapter_digest(folder)


def test_startup_refuses_weights_that_are_not_the_recorded_version(
    folders: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    expected, actual = digest(folders["run1"]), digest(folders["overwritten"])
    assert expected != actual
    config = ServeConfig(
        base_model=MINILM,
        task="sequence-classification",
        adapters=[AdapterSpec(name="triage", version="v1", uri=str(folders["overwritten"]), digest=expected)],
    )
    caplog.set_level(logging.ERROR, logger="kubetune.serve")
    with TestClient(create_app(config)) as client:
        wait_for(lambda: client.get("/readyz").json()["reason"] != "loading", 300, "the start-up to end")
        ready = client.get("/readyz")
        models = client.get("/v1/models").json()["data"]
    assert ready.status_code == 503 and ready.json()["ready"] is False
    reason = ready.json()["reason"]
    assert "AdapterDigestError" in reason and f"expected digest {expected}, found {actual}" in reason
    assert models == []
    logged = [r.getMessage() for r in caplog.records if "refusing adapter triage@v1" in r.getMessage()]
    assert logged and expected in logged[0] and actual in logged[0]


@pytest.fixture(scope="module")
def server(folders: dict[str, Path]) -> Iterator[tuple[str, DrainingServer]]:
    config = admin_config(
        base_model=MINILM,
        task="sequence-classification",
        adapters=[
            AdapterSpec(name="triage", version="v1", uri=str(folders["run1"]), digest=digest(folders["run1"]))
        ],
    )
    with running_server(config) as running:
        yield running


def test_hot_load_refuses_a_digest_mismatch_and_keeps_serving(
    server: tuple[str, DrainingServer], folders: dict[str, Path]
) -> None:
    url, _ = server
    body = {
        "name": "triage",
        "version": "v2",
        "uri": str(folders["overwritten"]),
        "digest": digest(folders["run1"]),
    }
    refused = httpx.post(f"{url}/admin/adapters", json=body, headers=AUTH, timeout=60)
    assert refused.status_code == 422, refused.text
    error = error_of(refused)
    assert error["code"] == "adapter_digest_mismatch"
    assert f"found {digest(folders['overwritten'])}" in error["message"]
    served = {m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]}
    assert "triage@v1" in served and "triage@v2" not in served
    assert httpx.get(f"{url}/readyz").status_code == 200

    bad = httpx.post(f"{url}/admin/adapters", json={**body, "digest": "md5:1"}, headers=AUTH, timeout=60)
    assert bad.status_code == 400 and "digest" in error_of(bad)["message"]

    right = {**body, "uri": str(folders["run2"]), "digest": digest(folders["run2"])}
    loaded = httpx.post(f"{url}/admin/adapters", json=right, headers=AUTH, timeout=60)
    assert loaded.status_code == 200, loaded.text
    assert loaded.json()["loaded"]["digest"] == digest(folders["run2"])
    assert [a["version"] for a in loaded.json()["unloaded"]] == ["v1"]
