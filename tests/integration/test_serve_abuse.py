"""One hostile or careless client against a real server (SmolLM2 chat base + a MiniLM classifier as an
extra task, review queue on): every abuse gets its specific status and message, carries x-request-id
and is counted as an error, /healthz keeps answering within 1 s while it runs (a liveness probe would
restart the pod otherwise: a correctness bound, not a benchmark), and memory comes back after 10 MB
bodies. benchmarks/serve_abuse.py measures the same cases before and after (SERVE_ABUSE_RESULTS.md).
"""

from __future__ import annotations

import gc
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from kubetune_trainer.serve.config import AdapterSpec, ServeMonitoring, TaskServing
from kubetune_trainer.serve.main import DrainingServer
from kubetune_trainer.serve.review import MAX_TEXT_CHARS
from test_serve_helpers import (
    ADMIN_TOKEN,
    LABELS,
    MINILM,
    SMOLLM,
    HealthProbe,
    admin_config,
    error_of,
    make_adapters,
    metric,
    running_server,
    wait_for,
)

from kubetune.api.monitoring import ReviewSpec
from kubetune.kubectl_plugin.main import main as kubectl_kubetune

MB10 = 10 * 2**20
LIMIT = 2**20  # the default serving.maxBodyBytes
CLASSIFY_TOKENS = 256  # the classifier's maxInputTokens: 4096 characters before tokenizing
JSON = {"content-type": "application/json"}
AUTH = {"authorization": f"Bearer {ADMIN_TOKEN}"}
ERRORS = "kubetune_errors_total"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, DrainingServer]]:
    out = tmp_path_factory.mktemp("abuse")
    triage = make_adapters(MINILM, "sequence-classification", out, {"triage": 1}, LABELS)
    config = admin_config(
        base_model=SMOLLM,
        task="causal-lm",
        max_new_tokens=8,
        tasks=[
            TaskServing(
                base_model=MINILM,
                task="sequence-classification",
                max_input_tokens=CLASSIFY_TOKENS,
                adapters=[AdapterSpec(name="triage", version="v1", uri=str(triage["triage"]))],
                # every input is "uncertain" (margin < 1): each one reaches the review queue
                monitoring=ServeMonitoring(
                    fresh_data_uri=str(out / "fresh"), review=ReviewSpec(margin_threshold=1.0)
                ),
            )
        ],
    )
    with running_server(config) as running:
        yield running


def chat(text: str) -> dict[str, object]:
    return {"model": "base", "messages": [{"role": "user", "content": text}], "max_tokens": 1}


def rss_mb() -> float:
    gc.collect()
    return psutil.Process().memory_info().rss / 2**20


def chunked(data: bytes) -> Iterator[bytes]:
    """A body without Content-Length (Transfer-Encoding: chunked), 64 KiB at a time."""
    for i in range(0, len(data), 1 << 16):
        yield data[i : i + (1 << 16)]


def assert_refused(response: httpx.Response, status: int, code: str, words: str) -> None:
    assert response.status_code == status, response.text[:500]
    error = error_of(response)
    assert error["code"] == code and words in error["message"], error
    assert response.headers.get("x-request-id"), "every answer carries its request id"


def test_a_10mb_body_gets_413_before_it_is_read(server: tuple[str, DrainingServer]) -> None:
    url, _ = server
    errors, baseline = metric(url, ERRORS), rss_mb()
    cases = [
        ("/v1/chat/completions", json.dumps(chat("word " * (MB10 // 5))).encode(), False),
        ("/v1/completions", json.dumps({"model": "base", "prompt": "x" * MB10}).encode(), False),
        ("/v1/classify", json.dumps({"model": "triage", "input": "word " * (MB10 // 5)}).encode(), False),
        ("/v1/classify", json.dumps({"model": "triage", "input": ["w" * 10240] * 1024}).encode(), True),
    ]
    for path, data, stream in cases:
        with HealthProbe(url) as probe:
            response = httpx.post(f"{url}{path}", content=chunked(data) if stream else data, headers=JSON)
        assert_refused(response, 413, "request_too_large", f"maxBodyBytes {LIMIT} bytes")
        assert probe.answers and probe.longest < 1.0, f"{path}: /healthz took {probe.longest:.1f} s"
    del cases, data
    assert metric(url, ERRORS, adapter="unknown") >= errors + 4
    assert rss_mb() - baseline < 64, f"RSS {baseline:.0f} -> {rss_mb():.0f} MB after four 10 MB bodies"


def test_long_text_is_bounded_in_characters_before_tokenizing(server: tuple[str, DrainingServer]) -> None:
    url, _ = server
    long = "word " * 120_000  # 600 KB: under the body limit, far over any prompt this server takes
    with HealthProbe(url) as probe:
        refused = [
            httpx.post(f"{url}/v1/chat/completions", json=chat(long), timeout=60),
            httpx.post(f"{url}/v1/completions", json={"model": "base", "prompt": long}, timeout=60),
            httpx.post(f"{url}/v1/completions", json={"model": "base", "prompt": ["hi", long]}, timeout=60),
        ]
        cut = httpx.post(f"{url}/v1/classify", json={"model": "triage", "input": [long, "hi"]}, timeout=60)
    for response, param in zip(refused, ("messages", "prompt", "prompt[1]"), strict=True):
        assert_refused(response, 400, "context_length_exceeded", f"{param}: 600000 characters, more than")
        assert "16 per token of maxInputTokens 512" in error_of(response)["message"]
    assert cut.status_code == 200, cut.text[:500]
    assert [d["truncated"] for d in cut.json()["data"]] == [True, False], "truncate: long input cut"
    assert probe.longest < 1.0, f"/healthz took {probe.longest:.1f} s"


def test_inputs_and_prompts_per_request_are_bounded(server: tuple[str, DrainingServer]) -> None:
    url, _ = server
    errors = metric(url, ERRORS)
    many = httpx.post(f"{url}/v1/classify", json={"model": "triage", "input": ["hi"] * 257})
    assert_refused(
        many, 400, "invalid_request", "input: 257 inputs, more than this server's maxInputsPerRequest 256"
    )
    wide = {"model": "base", "prompt": [f"Ticket {i}:" for i in range(64)], "max_tokens": 4}
    assert_refused(
        httpx.post(f"{url}/v1/completions", json=wide),
        400,
        "invalid_request",
        "prompt: 64 prompts, more than this server's maxBatchSize 8 per request",
    )
    assert metric(url, ERRORS) == errors + 2


def test_a_small_classify_takes_turns_with_a_big_one(server: tuple[str, DrainingServer]) -> None:
    url, running = server
    batcher = running.tasks[1].batcher
    big = {"model": "triage", "input": [f"ticket {i}: " + "my parcel is late " * 25 for i in range(96)]}
    finished: list[str] = []

    def send(name: str, body: dict[str, object]) -> None:
        response = httpx.post(f"{url}/v1/classify", json=body, timeout=300)
        assert response.status_code == 200, response.text[:300]
        finished.append(name)

    passes = len(batcher.batch_sizes)
    with HealthProbe(url) as probe:
        thread = threading.Thread(target=send, args=("big", big))
        thread.start()
        wait_for(lambda: len(batcher.batch_sizes) > passes, 120, "the big request's first pass")
        send("small", {"model": "triage", "input": "where is my parcel?"})
        thread.join()
    assert finished == ["small", "big"], "the small request waited for all 96 inputs of the big one"
    assert probe.longest < 1.0, f"/healthz took {probe.longest:.1f} s"


def test_classify_work_stops_when_the_client_leaves(server: tuple[str, DrainingServer]) -> None:
    url, running = server
    batcher = running.tasks[1].batcher
    cancelled = metric(url, "kubetune_requests_cancelled_total")
    big = {
        "model": "triage",
        "input": [f"case {i}: " + "the login page keeps failing " * 40 for i in range(256)],
    }
    passes = len(batcher.batch_sizes)
    with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes the connection
        httpx.post(f"{url}/v1/classify", json=big, timeout=httpx.Timeout(60, read=1.0))
    wait_for(lambda: metric(url, "kubetune_requests_cancelled_total") == cancelled + 1, 60, "the cancel")

    def settled() -> bool:
        before = len(batcher.batch_sizes)
        time.sleep(1.0)
        return len(batcher.batch_sizes) == before

    wait_for(settled, 120, "the classifier to go idle")
    ran = sum(batcher.batch_sizes[passes:])
    assert ran < 256, f"{ran} of 256 inputs classified for a client that left"


@pytest.mark.parametrize(
    ("path", "body", "where"),
    [
        ("/v1/classify", b'{"model": "triage", "input": ["ok", "\\ud800"]}', "input[1]: character 0"),
        (
            "/v1/chat/completions",
            b'{"model": "base", "messages": [{"role": "user", "content": "hi \\udfff"}]}',
            "messages[0].content: character 3 is U+DFFF",
        ),
        ("/v1/completions", b'{"model": "base", "prompt": "\\ud800"}', "prompt: character 0 is U+D800"),
    ],
)
def test_unencodable_text_gets_a_clear_400(
    server: tuple[str, DrainingServer], path: str, body: bytes, where: str
) -> None:
    url, _ = server
    errors = metric(url, ERRORS, adapter="unknown")
    response = httpx.post(f"{url}{path}", content=body, headers=JSON)
    assert_refused(response, 400, "invalid_request", f"{where}")
    assert "lone surrogate" in error_of(response)["message"]
    assert metric(url, ERRORS, adapter="unknown") == errors + 1


def test_review_queue_is_capped_and_served_for_an_extra_task(
    server: tuple[str, DrainingServer], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = server
    dropped = metric(url, "kubetune_review_dropped_total", reason="too_long")
    short, long = "my invoice shows a double charge", "refund please " * 250  # 3,500 characters
    assert len(long) > MAX_TEXT_CHARS
    answered = httpx.post(f"{url}/v1/classify", json={"model": "triage", "input": [short, long]}, timeout=60)
    assert answered.status_code == 200, answered.text[:300]
    assert metric(url, "kubetune_review_dropped_total", reason="too_long") == dropped + 1

    queue = httpx.get(f"{url}/admin/review/queue", params={"limit": 1000}, headers=AUTH, timeout=60)
    assert queue.status_code == 200, queue.text[:300]  # the classifier is tasks[0], not the top level
    texts = [item["text"] for item in queue.json()["data"]]
    assert short in texts and long not in texts

    # `kubectl kubetune review --url` with the token in the environment: no kubectl, no cluster
    monkeypatch.setenv("KUBETUNE_ADMIN_TOKEN", ADMIN_TOKEN)
    monkeypatch.setenv("KUBECTL", str(Path(os.devnull) / "no-kubectl"))
    assert kubectl_kubetune(["review", "triage", "--url", url, "--limit", "1000", "-o", "json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["model"] == "triage" and short in [item["text"] for item in shown["data"]]
