"""The server on the real SmolLM2-135M (GGUF, dequantized) with two LoRA adapters: OpenAI SDK,
streaming, and batching that never changes an answer."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from kubetune_trainer.serve.config import AdapterSpec, ServeConfig
from kubetune_trainer.serve.main import DrainingServer
from test_serve_helpers import SMOLLM, error_of, make_adapters, running_server

PROMPTS = ["Write one word about the sea:", "List two colours:", "Say hello to Ada."]
TOKENS = 8


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, DrainingServer]]:
    folders = make_adapters(
        SMOLLM, "causal-lm", tmp_path_factory.mktemp("smollm"), {"pirate": 11, "poet": 22}
    )
    config = ServeConfig(
        base_model=SMOLLM,
        task="causal-lm",
        precision="fp32",  # batched == alone is exact-token in fp32 (bf16 rounds per batch shape)
        max_batch_size=8,
        batch_wait_ms=50,
        max_input_tokens=256,
        max_new_tokens=32,
        adapters=[AdapterSpec(name=name, version="v1", uri=str(path)) for name, path in folders.items()],
    )
    with running_server(config) as running:
        yield running


@pytest.fixture
def client(server: tuple[str, DrainingServer]) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server[0]}/v1", api_key="unused", max_retries=0)


def chat(client: openai.OpenAI, model: str, prompt: str) -> str:
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=TOKENS, temperature=0
    )
    return reply.choices[0].message.content or ""


def test_openai_sdk_chat_and_completions(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="pirate", messages=[{"role": "user", "content": PROMPTS[0]}], max_tokens=TOKENS, temperature=0
    )
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.role == "assistant" and reply.choices[0].message.content
    assert reply.choices[0].finish_reason in {"stop", "length"}
    assert reply.usage is not None and 0 < reply.usage.completion_tokens <= TOKENS
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert reply.system_fingerprint == "pirate@v1"

    text = client.completions.create(model="base", prompt="The sea is", max_tokens=4, temperature=0)
    assert text.object == "text_completion" and text.choices[0].text
    assert text.usage is not None and text.usage.completion_tokens <= 4


def test_openai_sdk_streaming_matches_non_streaming(client: openai.OpenAI) -> None:
    expected = chat(client, "poet", PROMPTS[1])
    stream = client.chat.completions.create(
        model="poet",
        messages=[{"role": "user", "content": PROMPTS[1]}],
        max_tokens=TOKENS,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] in (
        ["stop"],
        ["length"],
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0

    pieces = list(client.completions.create(model="poet", prompt="Roses are", max_tokens=4, stream=True))
    assert "".join(p.choices[0].text for p in pieces if p.choices)


@pytest.mark.slow
def test_adapters_batched_together_answer_as_when_alone(
    server: tuple[str, DrainingServer], client: openai.OpenAI
) -> None:
    url, running = server
    models = ["pirate", "poet", "base"]
    alone = {(m, p): chat(client, m, p) for m in models for p in PROMPTS[:2]}
    assert len({alone[(m, PROMPTS[0])] for m in models}) == 3, "adapters must change the answer"

    async def together() -> dict[tuple[str, str], str]:
        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as aclient:
            keys = list(alone)
            replies = await asyncio.gather(
                *(
                    aclient.chat.completions.create(
                        model=m, messages=[{"role": "user", "content": p}], max_tokens=TOKENS, temperature=0
                    )
                    for m, p in keys
                )
            )
            return {k: r.choices[0].message.content or "" for k, r in zip(keys, replies, strict=True)}

    running.state.batcher.batch_sizes.clear()
    assert asyncio.run(together()) == alone
    assert max(running.state.batcher.batch_sizes) > 1, "concurrent requests were not batched"


def test_bad_generation_requests_get_openai_errors(
    server: tuple[str, DrainingServer], client: openai.OpenAI
) -> None:
    url, _ = server
    with pytest.raises(openai.NotFoundError) as missing:
        chat(client, "pirate@v9", "hi")
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as too_long:
        client.completions.create(model="base", prompt="word " * 400, max_tokens=2)
    assert too_long.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="base", prompt="hi", max_tokens=10_000)
    cases = [
        {"model": "base", "messages": "not a list"},
        {"model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "many"},
        {"model": "base", "messages": [{"role": "user", "content": "hi"}], "n": 2},
        {"messages": [{"role": "user", "content": "hi"}]},
    ]
    for body in cases:
        response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)
        assert response.status_code == 400, body
        error_of(response)
    response = httpx.post(f"{url}/v1/classify", json={"model": "pirate", "input": "x"}, timeout=30)
    assert response.status_code == 400 and error_of(response)["code"] == "wrong_task"
    assert chat(client, "pirate", "hi"), "the server still answers after bad requests"


def test_models_lists_each_adapter_with_its_weights_digest(
    server: tuple[str, DrainingServer], tmp_path: Path
) -> None:
    url, running = server
    listed = {m["id"]: m for m in httpx.get(f"{url}/v1/models", timeout=30).json()["data"]}
    assert set(listed) == {"base", "pirate", "pirate@v1", "poet", "poet@v1"}  # every id a client may send
    assert listed["pirate"]["aliasOf"] == "pirate@v1" and listed["pirate"]["version"] == "v1"
    from kubetune_trainer.artifacts import adapter_digest

    for adapter in running.state.config.adapters:  # every served file's sha256, weights included
        assert listed[f"{adapter.name}@v1"]["digest"] == adapter_digest(Path(adapter.uri))
