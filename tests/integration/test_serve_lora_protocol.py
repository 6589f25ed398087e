"""vLLM's runtime LoRA endpoints on kubetune's server (what llm-d / AIBrix style routers call), on the
real MiniLM with real adapters: the bodies, status codes and answers of vLLM's
/v1/load_lora_adapter and /v1/unload_lora_adapter, behind the admin token, never reusing a name for
new weights, and an unload that really frees the adapter."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from kubetune_trainer.artifacts import adapter_digest
from kubetune_trainer.serve.config import AdapterSpec, ServeConfig
from kubetune_trainer.serve.main import DrainingServer
from test_serve_helpers import ADMIN_TOKEN, LABELS, MINILM, error_of, make_adapters, running_server

AUTH = {"authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_adapters(
        MINILM, "sequence-classification", tmp_path_factory.mktemp("minilm"), {"a": 1, "b": 2}, LABELS
    )


@pytest.fixture(scope="module")
def server(folders: dict[str, Path]) -> Iterator[tuple[str, DrainingServer]]:
    os.environ["KUBETUNE_ADMIN_TOKEN"] = ADMIN_TOKEN
    try:
        config = ServeConfig(
            base_model=MINILM,
            task="sequence-classification",
            max_input_tokens=64,
            adapters=[AdapterSpec(name="triage", version="v1", uri=str(folders["a"]))],
        )
    finally:
        del os.environ["KUBETUNE_ADMIN_TOKEN"]
    with running_server(config) as running:
        yield running


def served(url: str) -> set[str]:
    return {m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]}


def test_load_and_unload_answer_as_vllm_does(
    server: tuple[str, DrainingServer], folders: dict[str, Path]
) -> None:
    url, running = server
    body = {"lora_name": "triage@v2", "lora_path": str(folders["b"])}
    assert httpx.post(f"{url}/v1/load_lora_adapter", json=body).status_code == 401  # admin token

    loaded = httpx.post(f"{url}/v1/load_lora_adapter", json=body, headers=AUTH, timeout=60)
    assert loaded.status_code == 200, loaded.text
    assert loaded.text == "Success: LoRA adapter 'triage@v2' added successfully."
    assert loaded.headers["x-request-id"]
    assert {"triage@v1", "triage@v2"} <= served(url)
    answer = httpx.post(f"{url}/v1/classify", json={"model": "triage@v2", "input": ["where is my parcel"]})
    assert answer.status_code == 200 and answer.json()["system_fingerprint"] == "triage@v2"
    card = next(m for m in httpx.get(f"{url}/v1/models").json()["data"] if m["id"] == "triage@v2")
    assert card["root"] == str(folders["b"]) and card["parent"] == running.state.config.base_model_id

    again = httpx.post(f"{url}/v1/load_lora_adapter", json=body, headers=AUTH)
    assert again.status_code == 400
    assert error_of(again)["message"] == "The lora adapter 'triage@v2' has already been loaded."
    inplace = httpx.post(f"{url}/v1/load_lora_adapter", json={**body, "load_inplace": True}, headers=AUTH)
    assert inplace.status_code == 400 and "name@version" in error_of(inplace)["message"]
    missing = httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": "x"}, headers=AUTH)
    assert missing.status_code == 400
    assert error_of(missing)["message"] == "Both 'lora_name' and 'lora_path' must be provided."
    nowhere = httpx.post(
        f"{url}/v1/load_lora_adapter", json={"lora_name": "x@v1", "lora_path": "/srv/none"}, headers=AUTH
    )
    assert nowhere.status_code == 404 and error_of(nowhere)["type"] == "NotFoundError"

    unloaded = httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": "triage@v2"}, headers=AUTH)
    assert unloaded.status_code == 200
    assert unloaded.text == "Success: LoRA adapter 'triage@v2' removed successfully."
    assert "triage@v2" not in served(url) and "triage@v1" in served(url)
    assert running.state.registry.default_version("triage") == "v1"
    gone = httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": "triage@v2"}, headers=AUTH)
    assert gone.status_code == 404
    assert error_of(gone)["message"] == "The lora adapter 'triage@v2' cannot be found."


def test_a_bare_name_gets_the_weights_digest_as_its_version(
    server: tuple[str, DrainingServer], folders: dict[str, Path]
) -> None:
    url, _ = server
    body = {"lora_name": "intent", "lora_path": str(folders["b"])}
    assert httpx.post(f"{url}/v1/load_lora_adapter", json=body, headers=AUTH, timeout=60).status_code == 200
    version = adapter_digest(folders["b"]).removeprefix("sha256:")[:12]
    assert f"intent@{version}" in served(url)
    # The same name again, even with other weights, is refused: a name never changes its weights.
    other = httpx.post(
        f"{url}/v1/load_lora_adapter", json={**body, "lora_path": str(folders["a"])}, headers=AUTH
    )
    assert other.status_code == 400
    assert httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": "intent"}, headers=AUTH).is_success
    assert not any(m.startswith("intent") for m in served(url))
