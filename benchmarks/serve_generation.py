"""SmolLM2 generation serving benchmark, used by serve_latency.py: five ways to answer a wave of `c`
requests that arrive together (128-token prompts, 64 new tokens, greedy), interleaved per wave:

  naive     one generate() per request, peft adapter unmerged (adapter_names), one at a time
  padded    one generate() over the whole wave (what a static batcher at its best does)
  cb        transformers' continuous batching, model.generate_batch (active adapter; it cannot route)
  llamacpp  llama-cpp-python on the same GGUF file, in its own venv, one request at a time
  ours      kubetune serve over HTTP, streamed completions (continuous batching, adapter folded in)
  ours-int4 the same with serving.quantize int4 (4-bit weights, bf16 kernel inputs; LoRA unmerged)

Per request: TTFT (wave arrival -> first token), TPOT ((end - first token) / (tokens - 1)),
latency; per variant: generated tokens/s over the wave.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import torch
from transformers import GenerationConfig
from transformers.generation.streamers import BaseStreamer

PROMPT_TOKENS, NEW_TOKENS = 128, 64
VARIANTS = ("naive", "padded", "cb", "llamacpp", "ours", "ours-int4")
LLAMACPP_PY = Path("/tmp/llamacpp-venv/bin/python")
LLAMACPP_VERSION = "0.3.36"
Timing = dict[str, float]  # start (wave arrival), first, end, tokens


class FirstToken(BaseStreamer):
    """Records when generate() produced its first new token (the first put() carries the prompt)."""

    def __init__(self) -> None:
        self.calls, self.first = 0, 0.0

    def put(self, value: torch.Tensor) -> None:
        self.calls += 1
        if self.calls == 2:
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


def _generate(registry: Any, prompts: list[list[int]], adapter: str, start: float) -> list[Timing]:
    ids = torch.tensor(prompts)
    streamer = FirstToken()
    with torch.inference_mode():
        out = registry.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=False,
            pad_token_id=registry.tokenizer.pad_token_id,
            adapter_names=[adapter] * len(prompts),
            streamer=streamer,
        )
    end = time.perf_counter()
    tokens = out.shape[1] - ids.shape[1]
    return [{"start": start, "first": streamer.first, "end": end, "tokens": tokens} for _ in prompts]


def run_naive(registry: Any, prompts: list[list[int]], adapter: str) -> list[Timing]:
    start = time.perf_counter()
    return [t for p in prompts for t in _generate(registry, [p], adapter, start)]


def run_padded(registry: Any, prompts: list[list[int]], adapter: str) -> list[Timing]:
    return _generate(registry, prompts, adapter, time.perf_counter())


def run_cb(registry: Any, prompts: list[list[int]], adapter: str) -> list[Timing]:
    registry.model.set_adapter(adapter)  # the only way to get an adapter into generate_batch
    config = GenerationConfig(
        max_new_tokens=NEW_TOKENS,
        min_new_tokens=NEW_TOKENS,
        do_sample=False,
        eos_token_id=-1,
        pad_token_id=registry.tokenizer.pad_token_id,
    )
    start = time.perf_counter()
    with torch.inference_mode():
        outs = registry.model.generate_batch(prompts, generation_config=config, record_timestamps=True)
    return [
        {
            "start": start,
            "first": (o.timestamps or [o.lifespan[1]])[0],
            "end": o.lifespan[1] if o.lifespan[1] > 0 else time.perf_counter(),
            "tokens": len(o.generated_tokens),
        }
        for o in outs.values()
    ]


def install_llamacpp() -> bool:
    """llama-cpp-python in its own venv (never a project dependency). PyPI has only its source: the
    build takes ~12 min on 2 quiet cores (ggml picks AVX-512 at run time). False when it fails."""
    if LLAMACPP_PY.exists():
        return True
    venv = LLAMACPP_PY.parents[1]
    print(f"building llama-cpp-python {LLAMACPP_VERSION} into {venv} (once; ~12 min)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pin = f"llama-cpp-python=={LLAMACPP_VERSION}"
    done = subprocess.run([str(LLAMACPP_PY), "-m", "pip", "install", "-q", pin], check=False)
    return done.returncode == 0


def run_llamacpp(gguf: Path, texts: list[str]) -> tuple[list[Timing], float] | None:
    """None when llama-cpp-python could not be installed (install_llamacpp)."""
    if not install_llamacpp():
        return None
    job = {"gguf": str(gguf), "prompts": texts, "new_tokens": NEW_TOKENS, "threads": os.cpu_count() or 1}
    here = Path(__file__).with_name("llamacpp_client.py")
    done = subprocess.run(
        [str(LLAMACPP_PY), str(here)], input=json.dumps(job), capture_output=True, text=True, check=True
    )
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    start = lines[0]["start"]
    return [{**t, "start": start} for t in lines[:-1]], lines[-1]["peak_rss_mb"]


async def run_ours(url: str, texts: list[str], model: str) -> list[Timing]:
    async def one(c: httpx.AsyncClient, text: str, start: float) -> Timing:
        body = {"model": model, "prompt": text, "max_tokens": NEW_TOKENS, "temperature": 0, "stream": True}
        first, tokens = 0.0, 0
        async with c.stream("POST", f"{url}/v1/completions", json=body) as r:
            r.raise_for_status()
            async for line in r.aiter_lines():
                if line.startswith("data: {") and '"text": ""' not in line:
                    first = first or time.perf_counter()
                    tokens += 1
        return {"start": start, "first": first, "end": time.perf_counter(), "tokens": tokens}

    async with httpx.AsyncClient(timeout=900) as c:
        start = time.perf_counter()
        return list(await asyncio.gather(*(one(c, t, start) for t in texts)))


def summarise(timings: list[Timing]) -> dict[str, float]:
    def pct(values: list[float], q: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    ttft = [t["first"] - t["start"] for t in timings]
    tpot = [(t["end"] - t["first"]) / max(1, t["tokens"] - 1) for t in timings]
    wall = max(t["end"] for t in timings) - min(t["start"] for t in timings)
    return {
        "tps": sum(t["tokens"] for t in timings) / wall,
        "ttft50": pct(ttft, 0.5),
        "ttft99": pct(ttft, 0.99),
        "tpot50": pct(tpot, 0.5) * 1000,
        "tpot99": pct(tpot, 0.99) * 1000,
        "lat50": pct([t["end"] - t["start"] for t in timings], 0.5),
    }
