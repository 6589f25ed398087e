"""The server on the real MiniLM with classification adapters: classify, feedback, metrics, bad
requests, admin hot swap under load, unload that frees weights, and start-up that fails loudly."""

from __future__ import annotations

import gc
import os
import threading
import weakref
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from kubetune_trainer.serve.config import AdapterSpec, ServeConfig
from kubetune_trainer.serve.main import DrainingServer, make_server
from test_serve_helpers import (
    ADMIN_TOKEN,
    LABELS,
    MINILM,
    error_of,
    free_port,
    make_adapters,
    running_server,
    wait_for,
)

TEXTS = ["I was charged twice for my order", "cannot log in after the password reset", "where is my parcel?"]
AUTH = {"authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_adapters(
        MINILM,
        "sequence-classification",
        tmp_path_factory.mktemp("minilm"),
        {"triage": 1, "triage-v2": 2, "intent": 3},
        LABELS,
    )


@pytest.fixture(scope="module")
def server(folders: dict[str, Path]) -> Iterator[tuple[str, DrainingServer]]:
    os.environ["KUBETUNE_ADMIN_TOKEN"] = ADMIN_TOKEN
    try:
        config = ServeConfig(
            base_model=MINILM,
            task="sequence-classification",
            batch_wait_ms=20,
            max_input_tokens=64,
            adapters=[
                AdapterSpec(name="triage", version="v1", uri=str(folders["triage"])),
                AdapterSpec(name="intent", version="v1", uri=str(folders["intent"])),
            ],
        )
    finally:
        del os.environ["KUBETUNE_ADMIN_TOKEN"]
    with running_server(config) as running:
        yield running


def classify(url: str, model: str, texts: list[str]) -> list[dict[str, float]]:
    response = httpx.post(f"{url}/v1/classify", json={"model": model, "input": texts}, timeout=60)
    assert response.status_code == 200, response.text
    return [row["probabilities"] for row in response.json()["data"]]


def close(a: list[dict[str, float]], b: list[dict[str, float]], tol: float = 1e-5) -> bool:
    return all(abs(x[k] - y[k]) < tol for x, y in zip(a, b, strict=True) for k in x)


def test_classify_concurrent_adapters_match_alone(server: tuple[str, DrainingServer]) -> None:
    url, running = server
    alone = {(m, t): classify(url, m, [t]) for m in ("triage", "intent") for t in TEXTS}
    assert not close(alone[("triage", TEXTS[0])], alone[("intent", TEXTS[0])]), "adapters must differ"
    running.state.batcher.batch_sizes.clear()
    with ThreadPoolExecutor(12) as pool:
        together = dict(
            zip(alone, pool.map(lambda k: classify(url, k[0], [k[1]]), list(alone) * 2), strict=False)
        )
    diffs = {
        k: max(abs(x[c] - y[c]) for x, y in zip(together[k], alone[k], strict=True) for c in x) for k in alone
    }
    assert all(close(together[k], alone[k]) for k in alone), diffs
    assert max(running.state.batcher.batch_sizes) > 1, "concurrent requests were not batched"
    many = httpx.post(f"{url}/v1/classify", json={"model": "triage", "input": TEXTS}, timeout=60).json()
    assert [row["index"] for row in many["data"]] == [0, 1, 2]
    assert all(
        row["label"] in LABELS and abs(sum(row["probabilities"].values()) - 1) < 1e-4 for row in many["data"]
    )
    assert many["system_fingerprint"] == "triage@v1"


def test_feedback_counts_into_rolling_accuracy(server: tuple[str, DrainingServer]) -> None:
    url, _ = server
    response = httpx.post(
        f"{url}/v1/classify",
        json={"model": "intent", "input": TEXTS[:2]},
        headers={"x-request-id": "fb-1"},
        timeout=60,
    )
    assert response.headers["x-request-id"] == "fb-1"
    predicted = [row["label"] for row in response.json()["data"]]
    wrong = next(label for label in LABELS if label != predicted[1])
    first = httpx.post(f"{url}/v1/feedback", json={"requestId": "fb-1", "label": predicted[0]}).json()
    second = httpx.post(
        f"{url}/v1/feedback", json={"requestId": "clf-fb-1", "index": 1, "label": wrong}
    ).json()
    assert (first["correct"], second["correct"]) == (True, False)
    assert second["rollingAccuracy"] == 0.5 and second["model"] == "intent@v1"
    metrics = httpx.get(f"{url}/metrics").text
    assert 'kubetune_accuracy{adapter="intent",version="v1"} 0.5' in metrics
    assert 'kubetune_feedback_total{adapter="intent",version="v1"} 2.0' in metrics
    unknown = httpx.post(f"{url}/v1/feedback", json={"requestId": "never-seen", "correct": True})
    assert unknown.status_code == 404 and error_of(unknown)["code"] == "request_id_not_found"
    both = httpx.post(f"{url}/v1/feedback", json={"requestId": "fb-1", "correct": True, "label": "x"})
    assert both.status_code == 400


def test_long_inputs_are_truncated_and_bad_inputs_fail_alone(server: tuple[str, DrainingServer]) -> None:
    url, running = server
    limit = running.state.config.max_input_tokens
    long_text = TEXTS[0] + " and then" * 100  # far past maxInputTokens 64
    head = running.state.registry.tokenizer.decode(
        running.state.registry.tokenizer(long_text, truncation=True, max_length=limit).input_ids,
        skip_special_tokens=True,
    )
    body = {"model": "triage", "input": [TEXTS[1], long_text, "", TEXTS[2]]}
    response = httpx.post(f"{url}/v1/classify", json=body, timeout=60)
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [d["index"] for d in data] == [0, 1, 2, 3]
    assert [d.get("truncated") for d in data] == [False, True, None, False]
    assert data[2]["error"]["code"] == "invalid_request" and data[2]["error"]["param"] == "input[2]"
    assert "label" not in data[2]
    # The others are answered as when sent alone (padding to the long row moves them ~1e-4); the long
    # one as its first 64 tokens.
    assert close([data[0]["probabilities"]], classify(url, "triage", [TEXTS[1]]), 1e-3)
    assert close([data[3]["probabilities"]], classify(url, "triage", [TEXTS[2]]), 1e-3)
    assert close([data[1]["probabilities"]], classify(url, "triage", [head]), 1e-3)
    assert response.json()["usage"]["prompt_tokens"] <= 3 * limit

    strict = running.state.config.model_copy(update={"truncate": False})
    running.state.config = strict
    try:
        refused = httpx.post(f"{url}/v1/classify", json=body, timeout=60).json()["data"]
        alone = httpx.post(f"{url}/v1/classify", json={"model": "triage", "input": long_text}, timeout=60)
    finally:
        running.state.config = strict.model_copy(update={"truncate": True})
    assert refused[1]["error"]["code"] == "context_length_exceeded"
    assert "maxInputTokens 64" in refused[1]["error"]["message"]
    assert close([refused[0]["probabilities"]], [data[0]["probabilities"]], 1e-3)
    assert alone.status_code == 400 and error_of(alone)["code"] == "context_length_exceeded"


def test_bad_requests_get_4xx_and_never_crash(server: tuple[str, DrainingServer]) -> None:
    url, _ = server
    post = lambda body, **kw: httpx.post(f"{url}/v1/classify", timeout=30, **({"json": body} | kw))  # noqa: E731
    cases = [
        (post({"model": "nope", "input": "x"}), 404, "model_not_found"),
        (post({"model": "triage", "input": " "}), 400, "invalid_request"),
        (
            post(
                None, content=b'{"model": "triage", "input": ', headers={"content-type": "application/json"}
            ),
            400,
            "invalid_request",
        ),
        (post({"model": "triage", "input": 42}), 400, "invalid_request"),
        (post({"model": "triage", "input": []}), 400, "invalid_request"),
        (
            httpx.post(
                f"{url}/v1/chat/completions",
                json={"model": "triage", "messages": [{"role": "user", "content": "hi"}]},
            ),
            400,
            "wrong_task",
        ),
        (
            httpx.post(
                f"{url}/v1/classify",
                json={"model": "triage", "input": "x"},
                headers={"x-request-id": "bad id with spaces"},
            ),
            400,
            "invalid_request_id",
        ),
    ]
    for response, status, code in cases:
        assert response.status_code == status, response.text
        assert error_of(response)["code"] == code
        assert response.headers.get("x-request-id")
    assert 'kubetune_errors_total{adapter="unknown",version=""}' in httpx.get(f"{url}/metrics").text
    assert httpx.get(f"{url}/healthz").status_code == 200
    assert classify(url, "triage", ["still fine"])


def test_admin_needs_the_token(server: tuple[str, DrainingServer], folders: dict[str, Path]) -> None:
    url, _ = server
    body = {"name": "triage", "version": "v9", "uri": str(folders["triage"])}
    assert httpx.post(f"{url}/admin/adapters", json=body).status_code == 401
    wrong = httpx.post(f"{url}/admin/adapters", json=body, headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 401 and error_of(wrong)["type"] == "authentication_error"
    missing = httpx.post(f"{url}/admin/adapters", json={**body, "uri": "/does/not/exist"}, headers=AUTH)
    assert missing.status_code == 422 and error_of(missing)["code"] == "adapter_load_failed"


def test_hot_swap_under_load_serves_new_weights_with_zero_failures(
    server: tuple[str, DrainingServer], folders: dict[str, Path]
) -> None:
    url, _ = server
    httpx.post(
        f"{url}/admin/adapters",
        json={"name": "triage", "version": "v2", "uri": str(folders["triage-v2"]), "unloadPrevious": False},
        headers=AUTH,
    ).raise_for_status()
    v2_alone = classify(url, "triage@v2", TEXTS)
    httpx.delete(
        f"{url}/admin/adapters", params={"name": "triage", "version": "v2"}, headers=AUTH
    ).raise_for_status()
    v1_alone = classify(url, "triage", TEXTS)

    failures: list[str] = []
    answers: list[tuple[str, list[dict[str, float]]]] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=60) as c:
            while not stop.is_set():
                r = c.post(f"{url}/v1/classify", json={"model": "triage", "input": TEXTS})
                if r.status_code != 200:
                    failures.append(r.text)
                else:
                    answers.append(
                        (r.json()["system_fingerprint"], [row["probabilities"] for row in r.json()["data"]])
                    )

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    wait_for(lambda: len(answers) >= 8, 60, "traffic before the swap")
    swap = httpx.post(
        f"{url}/admin/adapters",
        json={"name": "triage", "version": "v2", "uri": str(folders["triage-v2"])},
        headers=AUTH,
        timeout=60,
    )
    count = len(answers)
    wait_for(lambda: len(answers) >= count + 8, 60, "traffic after the swap")
    stop.set()
    for t in threads:
        t.join()
    assert swap.status_code == 200, swap.text
    assert [a["version"] for a in swap.json()["unloaded"]] == ["v1"]
    assert failures == []
    served = [fp for fp, _ in answers]
    assert served[0] == "triage@v1" and served[-1] == "triage@v2"
    assert served == sorted(served), "once swapped, v1 must never answer again"
    for fingerprint, probs in answers:
        assert close(probs, v1_alone if fingerprint == "triage@v1" else v2_alone)
    listed = [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]]
    assert "triage@v2" in listed and "triage@v1" not in listed


def test_unload_frees_the_adapter_weights(
    server: tuple[str, DrainingServer], folders: dict[str, Path]
) -> None:
    url, running = server
    registry = running.state.registry
    loaded = httpx.post(
        f"{url}/admin/adapters",
        json={"name": "extra", "version": "v1", "uri": str(folders["intent"])},
        headers=AUTH,
    ).json()
    key = registry.resolve("extra").peft_name
    lora_weights = [weakref.ref(p) for n, p in registry.model.named_parameters() if f".{key}." in n]
    assert lora_weights and loaded["loaded"]["parameters"] > 0
    gone = httpx.delete(f"{url}/admin/adapters", params={"name": "extra"}, headers=AUTH).json()
    gc.collect()
    assert gone["parametersBefore"] - gone["parametersAfter"] == loaded["loaded"]["parameters"]
    assert all(ref() is None for ref in lora_weights), "unloaded adapter weights are still referenced"
    assert key not in registry.model.peft_config
    assert httpx.post(f"{url}/v1/classify", json={"model": "extra", "input": "x"}).status_code == 404


def test_admin_disabled_without_token(server: tuple[str, DrainingServer]) -> None:
    url, running = server
    token, running.state.config.admin_token = running.state.config.admin_token, None
    try:
        response = httpx.delete(f"{url}/admin/adapters", params={"name": "triage"}, headers=AUTH)
        assert response.status_code == 403 and error_of(response)["code"] == "admin_disabled"
    finally:
        running.state.config.admin_token = token


def test_startup_fails_loudly_when_a_declared_adapter_cannot_load(tmp_path: Path) -> None:
    config = ServeConfig(
        base_model=MINILM,
        task="sequence-classification",
        labels=LABELS,
        host="127.0.0.1",
        port=free_port(),
        adapters=[AdapterSpec(name="triage", version="v1", uri=str(tmp_path / "none"))],
    )
    server = make_server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    thread.join(120)
    assert not thread.is_alive(), "the server must stop when a declared adapter cannot load"
    assert "no adapter_config.json" in (server.state.startup_error or "")
    assert not server.state.ready
