"""One real server with two tasks (SmolLM2 chat adapter + MiniLM classifier adapter) behind one URL:
the queue bound sheds with 429 + Retry-After, abandoned requests stop generating, /v1/models lists
every id a client may send, and "ready" is logged only once /readyz is 200."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from kubetune_trainer.serve.config import AdapterSpec, ServeConfig, TaskServing
from kubetune_trainer.serve.main import DrainingServer
from test_serve_helpers import (
    ADMIN_TOKEN,
    LABELS,
    MINILM,
    SMOLLM,
    is_ready,
    make_adapters,
    metric,
    running_server,
    wait_for,
)

MAX_QUEUED = 2
LONG = 64  # tokens of a generation the tests abandon
COUNTING = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"  # the model keeps counting past max_tokens


class ReadyLog(logging.Handler):
    """Asks /readyz as soon as a "ready" line is logged (from another thread: the line is logged on
    the server's event loop, which must stay free to answer)."""

    def __init__(self) -> None:
        super().__init__()
        self.url = ""
        self.seen: list[bool] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("ready"):
            threading.Thread(target=lambda: self.seen.append(is_ready(self.url))).start()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, DrainingServer, ReadyLog]]:
    out = tmp_path_factory.mktemp("tasks")
    chat = make_adapters(SMOLLM, "causal-lm", out, {"pirate": 11})
    triage = make_adapters(MINILM, "sequence-classification", out, {"triage": 1}, LABELS)
    os.environ["KUBETUNE_ADMIN_TOKEN"] = ADMIN_TOKEN
    config = ServeConfig(
        base_model=SMOLLM,
        task="causal-lm",
        max_batch_size=2,
        max_new_tokens=LONG,
        max_queued=MAX_QUEUED,
        adapters=[AdapterSpec(name="pirate", version="v1", uri=str(chat["pirate"]))],
        tasks=[
            TaskServing(
                base_model=MINILM,
                task="sequence-classification",
                adapters=[AdapterSpec(name="triage", version="v1", uri=str(triage["triage"]))],
            )
        ],
    )
    del os.environ["KUBETUNE_ADMIN_TOKEN"]
    log = logging.getLogger("kubetune.serve")
    handler = ReadyLog()
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        with running_server(config, on_url=lambda url: setattr(handler, "url", url)) as (url, running):
            yield url, running, handler
    finally:
        log.removeHandler(handler)


def long_chat(url: str, **kw: object) -> httpx.Response:
    body = {"model": "pirate", "prompt": COUNTING, "max_tokens": LONG, "temperature": 0}
    return httpx.post(f"{url}/v1/completions", json=body, **kw)  # type: ignore[arg-type]


def test_ready_is_logged_once_readyz_is_200(server: tuple[str, DrainingServer, ReadyLog]) -> None:
    wait_for(lambda: bool(server[2].seen), 10, "the check after the ready line")
    assert server[2].seen == [True]


def test_one_url_serves_a_classifier_and_a_chat_adapter(server: tuple[str, DrainingServer, ReadyLog]) -> None:
    url, _, _ = server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    reply = client.chat.completions.create(
        model="pirate", messages=[{"role": "user", "content": "hi"}], max_tokens=4, temperature=0
    )
    assert reply.system_fingerprint == "pirate@v1" and reply.choices[0].message.content
    classified = httpx.post(f"{url}/v1/classify", json={"model": "triage", "input": ["where is my parcel?"]})
    assert classified.status_code == 200 and classified.json()["data"][0]["label"] in LABELS
    wrong = httpx.post(f"{url}/v1/classify", json={"model": "pirate", "input": "x"})
    assert wrong.status_code == 400, "a chat adapter is not a classifier"
    assert "answers by generation" in wrong.json()["error"]["message"]  # and the error says which to use

    listed = {m.id: m for m in client.models.list().data}
    assert set(listed) == {"base", "pirate", "pirate@v1", "triage", "triage@v1"}
    raw = {m["id"]: m for m in httpx.get(f"{url}/v1/models").json()["data"]}
    assert raw["pirate"]["aliasOf"] == "pirate@v1" and raw["pirate"]["digest"] == raw["pirate@v1"]["digest"]
    assert (raw["triage"]["task"], raw["pirate"]["task"]) == ("sequence-classification", "causal-lm")
    for model_id in listed:  # every listed id is one a client can send
        if raw[model_id]["task"] == "causal-lm":
            assert client.completions.create(model=model_id, prompt="Hi", max_tokens=1).choices
        else:
            assert httpx.post(f"{url}/v1/classify", json={"model": model_id, "input": "x"}).status_code == 200


def test_beyond_max_queued_requests_get_429_fast(server: tuple[str, DrainingServer, ReadyLog]) -> None:
    url, running, _ = server
    shed_before = metric(url, "kubetune_requests_shed_total")
    with ThreadPoolExecutor(MAX_QUEUED) as pool:
        held = [pool.submit(long_chat, url, timeout=300) for _ in range(MAX_QUEUED)]
        wait_for(lambda: running.state.admission.held == MAX_QUEUED, 60, "the queue to fill")
        assert metric(url, "kubetune_queue_length") == MAX_QUEUED
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        started = time.perf_counter()
        with pytest.raises(openai.RateLimitError) as shed:
            client.chat.completions.create(model="pirate", messages=[{"role": "user", "content": "hi"}])
        shed_s = time.perf_counter() - started
        classify = httpx.post(f"{url}/v1/classify", json={"model": "triage", "input": "x"})
        assert [f.result().status_code for f in held] == [200] * MAX_QUEUED
    assert shed.value.code == "server_overloaded"
    assert int(shed.value.response.headers["retry-after"]) >= 1
    assert classify.status_code == 429, "the bound is the pod's, across tasks"
    assert shed_s < 5, f"a shed request took {shed_s:.1f} s"  # loose: it must not wait for the model
    assert metric(url, "kubetune_requests_shed_total") == shed_before + 2
    assert metric(url, "kubetune_queue_length") == 0


@pytest.mark.parametrize("how", ["disconnect", "stream-disconnect", "x-request-timeout"])
def test_abandoned_requests_stop_generating(server: tuple[str, DrainingServer, ReadyLog], how: str) -> None:
    url, running, _ = server
    full = long_chat(url, timeout=300).json()
    assert full["choices"][0]["finish_reason"] == "length", "the prompt must run to max_tokens"
    prompt, full_s = full["usage"]["prompt_tokens"], _timed(lambda: long_chat(url, timeout=300))
    cancelled = metric(url, "kubetune_requests_cancelled_total")
    tokens = metric(url, "kubetune_tokens_total")
    give_up = full_s / 4
    if how == "disconnect":
        with pytest.raises(httpx.ReadTimeout):
            long_chat(url, timeout=give_up)
    elif how == "stream-disconnect":
        body = {"model": "pirate", "prompt": COUNTING, "max_tokens": LONG, "stream": True}
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=300) as response:
            next(response.iter_lines())
            time.sleep(give_up)  # the connection closes here, mid-generation
    else:
        answer = long_chat(url, timeout=300, headers={"x-request-timeout": f"{give_up:.2f}"})
        assert answer.status_code == 504 and answer.json()["error"]["code"] == "timeout"
    wait_for(lambda: metric(url, "kubetune_requests_cancelled_total") == cancelled + 1, full_s, "the cancel")
    generated = metric(url, "kubetune_tokens_total") - tokens - prompt
    assert 0 <= generated < LONG * 0.9, f"{generated:.0f} of {LONG} tokens generated for a client that left"
    assert running.state.admission.held == 0


def _timed(call: object) -> float:
    started = time.perf_counter()
    call()  # type: ignore[operator]
    return time.perf_counter() - started


def test_shed_and_cancel_counters_are_exported(server: tuple[str, DrainingServer, ReadyLog]) -> None:
    text = httpx.get(f"{server[0]}/metrics").text
    for name in (
        "kubetune_queue_length",
        "kubetune_requests_shed_total",
        "kubetune_requests_cancelled_total",
    ):
        assert f"# TYPE {name.removesuffix('_total')}" in text


def test_admin_hot_loads_each_adapter_onto_its_own_task(server: tuple[str, DrainingServer, ReadyLog]) -> None:
    url, running, _ = server
    auth = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    chat_task, classify_task = running.tasks
    for task in (classify_task, chat_task):
        adapter = task.config.adapters[0]
        body = {"name": adapter.name, "version": "v2", "uri": adapter.uri}
        loaded = httpx.post(f"{url}/admin/adapters", json=body, headers=auth, timeout=120)
        assert loaded.status_code == 200, loaded.text
        assert [a["version"] for a in loaded.json()["unloaded"]] == ["v1"]
    raw = {m["id"]: m for m in httpx.get(f"{url}/v1/models").json()["data"]}
    assert set(raw) == {"base", "pirate", "pirate@v2", "triage", "triage@v2"}
    assert (raw["triage"]["aliasOf"], raw["pirate"]["aliasOf"]) == ("triage@v2", "pirate@v2")
    served = httpx.post(f"{url}/v1/classify", json={"model": "triage", "input": "x"}).json()
    assert served["system_fingerprint"] == "triage@v2"
