"""kubetune in front of an OpenAI-compatible engine (issue 24, items 2 and 3), on CPU: the engine is a
real `kubetune serve` process on SmolLM2 (no adapters of its own), driven by the front only through
the endpoints vLLM has (/v1/models, /v1/load_lora_adapter, /v1/unload_lora_adapter,
/v1/chat/completions, /v1/completions); the front is `kubetune serve` with `engine.url`.

Chat and streaming pass through the front with its request ids, metrics and feedback; a rollout
v1 -> v2 in the front's ServeConfig file, swapped the way the kubelet refreshes a ConfigMap volume,
loads v2 in the engine, flips the alias, unloads v1, logs the line the operator reads and loses no
request, and a version the engine cannot load next leaves the front ready on v2; a restarted front is
not ready until the engine holds every desired adapter.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from kubetune_trainer.serve.config import load_serve_config
from kubetune_trainer.serve.main import DrainingServer, make_server
from kubetune_trainer.serve.served_report import last_report, last_served
from test_serve_helpers import (
    ADMIN_TOKEN,
    SMOLLM,
    free_port,
    is_ready,
    make_adapters,
    metric,
    running_server,
    wait_for,
)

AUTH = {"authorization": f"Bearer {ADMIN_TOKEN}"}
TOKENS = 6
PROMPT = [{"role": "user", "content": "Write one word about the sea:"}]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_adapters(SMOLLM, "causal-lm", tmp_path_factory.mktemp("smollm"), {"v1": 11, "v2": 22})


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The engine: a separate `kubetune serve` process with the base only, admin token = its API key."""
    work = tmp_path_factory.mktemp("engine")
    port = free_port()
    config = work / "engine.yaml"
    doc = {"baseModel": SMOLLM.wire(), "task": "causal-lm", "host": "127.0.0.1", "port": port}
    config.write_text(yaml.safe_dump({**doc, "precision": "fp32", "maxInputTokens": 256, "maxNewTokens": 32}))
    log = work / "engine.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "kubetune_trainer.serve", "-f", str(config)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "KUBETUNE_ADMIN_TOKEN": ADMIN_TOKEN},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: is_ready(url) or proc.poll() is not None, 300, "engine /readyz")
        assert proc.poll() is None, log.read_text()[-3000:]
        yield url
    finally:
        proc.kill()
        proc.wait(30)


def front_yaml(engine_url: str, adapters: dict[str, Path]) -> str:
    doc: dict[str, Any] = {
        "baseModel": SMOLLM.wire(),
        "task": "causal-lm",
        "engine": {"url": engine_url, "syncIntervalS": 0.3},
        "adapters": [{"name": "triage", "version": v, "uri": str(p)} for v, p in adapters.items()],
    }
    return yaml.safe_dump(doc)


def write_front_config(path: Path, engine_url: str, adapters: dict[str, Path]) -> None:
    path.write_text(front_yaml(engine_url, adapters))


def project_config_map(volume: Path, name: str, text: str) -> Path:
    """Write ``name`` into ``volume`` as the kubelet's atomic writer updates a ConfigMap volume: the
    data in a new timestamped folder, ``..data`` switched to it by one rename, the file a symlink
    through ``..data`` (a subPath mount binds the old file itself, which is why it never updates)."""
    volume.mkdir(exist_ok=True)
    stamp = volume / f"..{time.time_ns()}"
    stamp.mkdir()
    (stamp / name).write_text(text)
    link = volume / "..data_tmp"
    link.symlink_to(stamp.name)
    old = os.readlink(volume / "..data") if (volume / "..data").is_symlink() else None
    link.replace(volume / "..data")
    if not (volume / name).is_symlink():
        (volume / name).symlink_to(f"..data/{name}")
    if old is not None:
        shutil.rmtree(volume / old)
    return volume / name


def front_config(path: Path) -> Any:
    os.environ["KUBETUNE_ENGINE_API_KEY"] = ADMIN_TOKEN  # from a Secret in a pod
    try:
        return load_serve_config(path)
    finally:
        del os.environ["KUBETUNE_ENGINE_API_KEY"]


def engine_loras(engine_url: str) -> set[str]:
    cards = httpx.get(f"{engine_url}/v1/models").json()["data"]
    return {c["id"] for c in cards if c.get("parent") and not c.get("aliasOf")}


def clear_engine(engine_url: str) -> None:
    for name in engine_loras(engine_url):
        answer = httpx.post(f"{engine_url}/v1/unload_lora_adapter", json={"lora_name": name}, headers=AUTH)
        assert answer.status_code == 200, answer.text


def test_chat_and_stream_through_the_front(engine: str, folders: dict[str, Path], tmp_path: Path) -> None:
    clear_engine(engine)
    write_front_config(tmp_path / "front.yaml", engine, {"v1": folders["v1"]})
    reference = {  # as the trainer writes it: v1's validation prompts were all under 10 tokens
        "predictionDistribution": {"billing": 0.5, "login": 0.5},
        "confidenceHistogram": {"edges": [0.0, 0.5, 1.0], "counts": [1, 1]},
        "inputLengthHistogram": {"edges": [0.0, 10.0, 20.0, 1000.0], "counts": [10, 0, 0]},
    }
    (folders["v1"] / "reference_stats.json").write_text(json.dumps(reference))
    with running_server(front_config(tmp_path / "front.yaml")) as (url, _):
        assert engine_loras(engine) == {"triage@v1"}  # the front loaded it through the engine's API
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="triage",
            messages=PROMPT,
            max_tokens=TOKENS,
            temperature=0,  # type: ignore[arg-type]
        )
        reply = raw.parse()
        rid = raw.headers["x-request-id"]
        assert reply.id == f"chatcmpl-{rid}" and reply.model == "triage"
        assert reply.system_fingerprint == "triage@v1"  # the engine answered with the version
        text = reply.choices[0].message.content
        assert text and reply.usage is not None and 0 < reply.usage.completion_tokens <= TOKENS

        chunks = list(
            client.chat.completions.create(
                model="triage",
                messages=PROMPT,  # type: ignore[arg-type]
                max_tokens=TOKENS,
                temperature=0,
                stream=True,
            )
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
        assert all(c.usage is None for c in chunks)  # asked of the engine for our metric, not passed on
        assert {c.model for c in chunks} == {"triage"}

        done = client.completions.create(model="triage@v1", prompt="The sea is", max_tokens=3, temperature=0)
        assert done.choices[0].text and done.model == "triage@v1"

        missing = httpx.post(f"{url}/v1/chat/completions", json={"model": "nope", "messages": PROMPT})
        assert missing.status_code == 404 and missing.json()["error"]["param"] == "model"
        refused = httpx.post(
            f"{url}/v1/chat/completions", json={"model": "triage", "messages": PROMPT, "max_tokens": 10**6}
        )
        assert refused.status_code == 400 and "max_tokens" in refused.json()["error"]["message"]  # engine's

        feedback = httpx.post(f"{url}/v1/feedback", json={"requestId": reply.id, "correct": True})
        assert feedback.status_code == 200, feedback.text
        assert feedback.json()["model"] == "triage@v1" and feedback.json()["rollingAccuracy"] == 1.0
        assert metric(url, "kubetune_requests_total", adapter="triage", version="v1") == 4
        assert metric(url, "kubetune_errors_total", adapter="triage", version="v1") == 1
        assert metric(url, "kubetune_tokens_total", adapter="triage", version="v1") > 0
        # Drift without the model: the 3 answered adapter requests' prompt lengths (two chat prompts
        # over 20 tokens with the template: far from the reference); free-text answers carry no label.
        assert metric(url, "kubetune_drift_window_size", adapter="triage", version="v1") == 3
        assert metric(url, "kubetune_drift_score", adapter="triage", version="v1", kind="length_psi") > 1
        assert 'kind="label_psi"' not in httpx.get(f"{url}/metrics").text
        # The runtime, as the dashboard shows it: the front names the engine it fronts (its owned_by).
        assert metric(url, "kubetune_runtime_info", adapter="triage", engine="kubetune") == 1
        assert metric(engine, "kubetune_runtime_info", adapter="triage", engine="kubetune") == 1
        models = {m["id"]: m for m in httpx.get(f"{url}/v1/models").json()["data"]}
        assert models["triage"]["aliasOf"] == "triage@v1" and models["triage@v1"]["parent"] == "base"
        # What vLLM-built routers scrape, on the kubetune engine: every loaded adapter, not only busy ones.
        scraped = httpx.get(f"{engine}/metrics").text
        assert re.search(r'^vllm:lora_requests_info\{[^}]*running_lora_adapters="triage"', scraped, re.M)
        assert (
            metric(engine, "vllm:num_requests_running") == 0
            and metric(engine, "vllm:num_requests_waiting") == 0
        )
        assert "vllm:kv_cache_usage_perc{" in scraped
        by_hand = {"lora_name": "triage@v9", "lora_path": str(folders["v2"])}
        assert httpx.post(f"{url}/v1/load_lora_adapter", json=by_hand).status_code == 409  # config's job


def fingerprint_of(text: str, stream: bool) -> str:
    """The version that answered: system_fingerprint of the answer, or of a stream's last chunk."""
    if not stream:
        return str(json.loads(text)["system_fingerprint"])
    events = [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: {")]
    return str(json.loads(events[-1])["system_fingerprint"])


def chat_load(url: str, stop: threading.Event, results: list[tuple[int, str]], stream: bool) -> None:
    """One client chatting with the bare name until told to stop; every answer's status kept."""
    with httpx.Client(timeout=120) as client:
        while not stop.is_set():
            body = {"model": "triage", "messages": PROMPT, "max_tokens": 3, "stream": stream}
            try:
                answer = client.post(f"{url}/v1/chat/completions", json=body)
                ok = answer.status_code == 200 and '"error"' not in answer.text
                fingerprint = fingerprint_of(answer.text, stream) if ok else ""
                results.append((answer.status_code if ok else -answer.status_code, fingerprint))
            except httpx.HTTPError as err:
                results.append((0, repr(err)))


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_rollout_loads_flips_unloads_without_failures(
    engine: str, folders: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clear_engine(engine)
    caplog.set_level(logging.INFO, "kubetune.serve")
    volume = tmp_path / "etc-kubetune"  # the pod's ConfigMap volume, mounted as a directory
    path = project_config_map(volume, "serve-config.yaml", front_yaml(engine, {"v1": folders["v1"]}))
    with running_server(front_config(path)) as (url, _):
        stop, results = threading.Event(), []  # type: ignore[var-annotated]
        clients = [threading.Thread(target=chat_load, args=(url, stop, results, s)) for s in (False, True)]
        for c in clients:
            c.start()
        try:
            wait_for(lambda: len(results) >= 2, 120, "answers from v1")
            assert last_served(caplog.text) == {"triage": "triage@v1"}  # what the operator reads
            # The operator changed the ConfigMap; the kubelet swaps the mounted file in place.
            project_config_map(volume, "serve-config.yaml", front_yaml(engine, {"v2": folders["v2"]}))
            # Logged once v1 is unloaded and the engine no longer lists it.
            wait_for(lambda: last_served(caplog.text) == {"triage": "triage@v2"}, 120, "serving v2")
            assert engine_loras(engine) == {"triage@v2"}
            # A version the engine cannot load reaches every pod at once: they stay ready on v2.
            broken = project_config_map(
                volume, "serve-config.yaml", front_yaml(engine, {"v3": tmp_path / "missing"})
            )
            wait_for(lambda: warnings(caplog), 60, "v3 refused")
            seen = len(results)
            wait_for(lambda: len(results) >= seen + 2, 120, "answers after the rollout, v3 refused")
            assert is_ready(url) and engine_loras(engine) == {"triage@v2"} and broken.is_symlink()
            assert "missing" in " ".join(warnings(caplog))
            refused = last_report(caplog.text)  # what the operator quotes once the load stalls
            assert refused is not None and refused.aliases == {"triage": "triage@v2"}
            assert "missing" in refused.failed["triage@v3"]
        finally:
            stop.set()
            for c in clients:
                c.join(120)
        assert [r for r in results if r[0] != 200] == []
        fingerprints = [f for _, f in results]
        assert fingerprints[0] == "triage@v1" and fingerprints[-1] == "triage@v2"
        assert is_ready(url)
        models = {m["id"]: m for m in httpx.get(f"{url}/v1/models").json()["data"]}
        assert models["triage"]["aliasOf"] == "triage@v2" and "triage@v1" not in models
        assert last_served(caplog.text) == {"triage": "triage@v2"}  # the operator keeps seeing v2


def test_restarted_front_is_ready_only_once_the_engine_holds_every_adapter(
    engine: str, folders: dict[str, Path], tmp_path: Path
) -> None:
    clear_engine(engine)
    late = tmp_path / "late"  # not there yet: the engine cannot load it
    path = tmp_path / "front.yaml"
    write_front_config(path, engine, {"v1": folders["v1"], "v2": late})
    config = front_config(path).model_copy(update={"host": "127.0.0.1", "port": free_port()})
    server: DrainingServer = make_server(config)
    url = f"http://127.0.0.1:{config.port}"
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: engine_loras(engine) == {"triage@v1"}, 120, "v1 loaded, v2 refused")
        for _ in range(3):  # several sync passes later, still not ready
            answer = httpx.get(f"{url}/readyz")
            assert answer.status_code == 503, answer.text
            threading.Event().wait(0.3)
        shutil.copytree(folders["v2"], late)
        wait_for(lambda: is_ready(url), 120, "ready once the engine holds v2")
        assert engine_loras(engine) == {"triage@v1", "triage@v2"}
    finally:
        server.should_exit = True
        thread.join(60)
