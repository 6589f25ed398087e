"""Continuous batching on the real SmolLM2-135M with two LoRA adapters, driven step by step: rows of
different adapters and lengths that join a running batch mid-decode, leave it early or are cancelled
answer exactly (fp32, greedy) as each request served alone."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
import torch
from kubetune_trainer.serve.adapters import AdapterRegistry
from kubetune_trainer.serve.config import AdapterSpec, ServeConfig
from kubetune_trainer.serve.decode import RunningBatch
from kubetune_trainer.serve.inference import GenerationRow
from test_serve_helpers import SMOLLM, loaded_registry, make_adapters, running_server

PROMPTS = [
    "Write one word about the sea:",
    "List two colours and then explain at some length why people like each of them:",
    "Say hello to Ada.",
    "The capital of France is",
]
MODELS = ["pirate", "poet", "base", "pirate"]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> AdapterRegistry:
    folders = make_adapters(SMOLLM, "causal-lm", tmp_path_factory.mktemp("dec"), {"pirate": 11, "poet": 22})
    config = ServeConfig(
        base_model=SMOLLM,
        task="causal-lm",
        precision="fp32",
        adapters=[AdapterSpec(name=n, version="v1", uri=str(p)) for n, p in folders.items()],
    )
    return loaded_registry(config)


def row(reg: AdapterRegistry, i: int, tokens: int) -> GenerationRow:
    return GenerationRow(reg.resolve(MODELS[i]), reg.tokenizer(PROMPTS[i]).input_ids, tokens)


def run_until_done(batch: RunningBatch, schedule: dict[int, list[GenerationRow]]) -> int:
    """Step the batch, adding schedule[step] rows at that step; returns the widest batch seen."""
    step, widest = 0, 0
    while batch.size or any(k >= step for k in schedule):
        batch.step(schedule.get(step, []))
        widest = max(widest, batch.size)
        step += 1
    return widest


def alone(reg: AdapterRegistry, i: int, tokens: int) -> list[int]:
    r = row(reg, i, tokens)
    run_until_done(RunningBatch(reg), {0: [r]})
    return r.generated


def test_a_row_alone_answers_as_transformers_generate(registry: AdapterRegistry) -> None:
    ids = registry.tokenizer(PROMPTS[1], return_tensors="pt").input_ids
    with torch.inference_mode():
        out = registry.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=12,
            min_new_tokens=12,
            do_sample=False,
            pad_token_id=registry.tokenizer.pad_token_id,
            adapter_names=[registry.resolve("poet").peft_name],
        )
    assert alone(registry, 1, 12) == out[0, ids.shape[1] :].tolist()


def test_rows_joining_mid_decode_answer_as_alone(registry: AdapterRegistry) -> None:
    lengths = [12, 20, 6, 16]
    expected = [alone(registry, i, n) for i, n in enumerate(lengths)]
    assert len({tuple(e[:6]) for e in expected[:3]}) == 3, "each adapter / base answers differently"
    rows = [row(registry, i, n) for i, n in enumerate(lengths)]
    batch = RunningBatch(registry)
    # 0 and 1 start together; 2 joins at step 3 (mid-decode), 3 joins at step 9 after 2 has left.
    widest = run_until_done(batch, {0: rows[:2], 3: [rows[2]], 9: [rows[3]]})
    assert widest == 3
    assert [r.generated for r in rows] == expected
    assert [r.finish_reason for r in rows] == [
        "length" if len(e) == n else "stop" for e, n in zip(expected, lengths, strict=True)
    ]
    assert batch.cache is None and batch.size == 0


def test_cancelled_row_leaves_at_the_next_step_and_others_are_unchanged(registry: AdapterRegistry) -> None:
    expected = alone(registry, 1, 16)
    keep, cancel = row(registry, 1, 16), row(registry, 0, 16)
    batch = RunningBatch(registry)
    batch.step([keep, cancel])
    batch.step([])
    cancel.cancel()
    made = len(cancel.generated)
    batch.step([])
    assert batch.rows == [keep] and len(cancel.generated) == made
    run_until_done(batch, {})
    assert keep.generated == expected and cancel.finish_reason == "cancelled"


def test_unloading_an_adapter_in_use_waits_for_its_rows(registry: AdapterRegistry, tmp_path: Path) -> None:
    folder = make_adapters(SMOLLM, "causal-lm", tmp_path, {"sailor": 33})["sailor"]
    loaded = registry.load(AdapterSpec(name="sailor", version="v1", uri=str(folder)))
    target = registry.resolve("sailor")
    r = GenerationRow(target, registry.tokenizer(PROMPTS[0]).input_ids, 10)
    batch = RunningBatch(registry)
    batch.step([r])
    registry.unload("sailor", "v1")
    assert loaded.key in registry.model.peft_config, "weights freed under a running row"
    run_until_done(batch, {})
    assert loaded.key not in registry.model.peft_config
    assert len(r.generated) > 1


def test_over_http_a_request_joining_a_streaming_one_mid_decode_answers_as_alone(tmp_path: Path) -> None:
    folders = make_adapters(SMOLLM, "causal-lm", tmp_path, {"pirate": 11, "poet": 22})
    config = ServeConfig(
        base_model=SMOLLM,
        task="causal-lm",
        precision="fp32",
        batch_wait_ms=0,
        max_new_tokens=32,
        adapters=[AdapterSpec(name=n, version="v1", uri=str(p)) for n, p in folders.items()],
    )

    def body(model: str, prompt: str, stream: bool) -> dict[str, object]:
        return {"model": model, "prompt": prompt, "max_tokens": 24, "temperature": 0, "stream": stream}

    async def together(url: str) -> tuple[str, str]:
        async with httpx.AsyncClient(base_url=url, timeout=300) as c:
            late: asyncio.Task[httpx.Response] | None = None
            pieces = []
            async with c.stream("POST", "/v1/completions", json=body("pirate", PROMPTS[1], True)) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: {"):
                        pieces.append(json.loads(line[6:])["choices"][0]["text"])
                        if late is None and len(pieces) == 3:  # the stream is decoding: join it now
                            late = asyncio.create_task(
                                c.post("/v1/completions", json=body("poet", PROMPTS[0], False))
                            )
            assert late is not None
            return "".join(pieces), (await late).json()["choices"][0]["text"]

    with running_server(config) as (url, server):
        alone = [
            httpx.post(f"{url}/v1/completions", json=body(m, p, False), timeout=300).json()["choices"][0][
                "text"
            ]
            for m, p in (("pirate", PROMPTS[1]), ("poet", PROMPTS[0]))
        ]
        server.state.batcher.batch_sizes.clear()
        assert asyncio.run(together(url)) == tuple(alone)
        assert max(server.state.batcher.batch_sizes) == 2, "the late request did not join the running batch"
