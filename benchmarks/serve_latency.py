"""Serving latency benchmark (not a test): kubetune serve vs a naive per-request generate() loop.

For SmolLM2-135M (128-token prompt, 64 new tokens) and MiniLM classification, at concurrency 1, 8 and
32: p50 / p99 latency and throughput of
  * ours  — the real server (HTTP, dynamic batching, peft adapter unmerged), and
  * naive — one model.generate() / forward per request with the same peft adapter unmerged, one at a
    time (what a plain Flask-around-generate server does; concurrent clients queue for it),
plus adapter overhead: base alone (adapter off) vs adapter unmerged vs adapter merged, at batch 1.

    python benchmarks/serve_latency.py [--out benchmarks/SERVE_RESULTS.md] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
from kubetune_trainer.serve.adapters import AdapterRegistry
from kubetune_trainer.serve.config import AdapterSpec, ServeConfig
from test_serve_helpers import LABELS, MINILM, SMOLLM, make_adapters, running_server

PROMPT_TOKENS, NEW_TOKENS = 128, 64
CONCURRENCY = (1, 8, 32)
ROUNDS = 3


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(latencies: list[float], wall: float, tokens: int) -> dict[str, float]:
    return {
        "p50": pct(latencies, 0.5),
        "p99": pct(latencies, 0.99),
        "rps": len(latencies) / wall,
        "tps": tokens / wall,
    }


async def drive_server(
    url: str, path: str, bodies: list[dict[str, Any]], concurrency: int
) -> dict[str, float]:
    """`concurrency` clients, each sending its share of `bodies` back to back."""
    latencies: list[float] = []
    tokens = 0
    queue = list(bodies)

    async def client(c: httpx.AsyncClient) -> None:
        nonlocal tokens
        while queue:
            body = queue.pop()
            start = time.perf_counter()
            r = await c.post(f"{url}{path}", json=body)
            r.raise_for_status()
            latencies.append(time.perf_counter() - start)
            tokens += r.json()["usage"].get("completion_tokens", 1)

    async with httpx.AsyncClient(timeout=600) as c:
        start = time.perf_counter()
        await asyncio.gather(*(client(c) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return summary(latencies, wall, tokens)


def drive_naive(serve_one: Callable[[int], int], requests: int, concurrency: int) -> dict[str, float]:
    """One request at a time; `concurrency` clients arrive together, so request i waits for i-1 others.

    Runs on a worker thread, as the server's model calls do, so both see the same threading.
    """
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(_drive_naive, serve_one, requests, concurrency).result()


def _drive_naive(serve_one: Callable[[int], int], requests: int, concurrency: int) -> dict[str, float]:
    latencies: list[float] = []
    tokens = 0
    start = time.perf_counter()
    for wave in range(0, requests, concurrency):
        wave_start = time.perf_counter()
        for i in range(wave, min(requests, wave + concurrency)):
            tokens += serve_one(i)
            latencies.append(time.perf_counter() - wave_start)
    return summary(latencies, time.perf_counter() - start, tokens)


def prompt_of(tokenizer: Any, i: int) -> str:
    words = f"Request {i}: summarise the customer ticket about a delayed parcel and a refund. " * 40
    return str(tokenizer.decode(tokenizer(words).input_ids[:PROMPT_TOKENS]))


def bench_smollm(workdir: Path, quick: bool) -> dict[str, Any]:
    folder = make_adapters(SMOLLM, "causal-lm", workdir, {"support": 1})["support"]
    config = ServeConfig(
        base_model=SMOLLM,
        task="causal-lm",
        max_batch_size=32,
        batch_wait_ms=10,
        max_new_tokens=NEW_TOKENS,
        adapters=[AdapterSpec(name="support", version="v1", uri=str(folder))],
    )
    registry = AdapterRegistry(config)
    registry.load_base()
    registry.load(config.adapters[0])
    tok = registry.tokenizer
    prompts = [prompt_of(tok, i) for i in range(64)]
    rows: dict[str, Any] = {"ours": {}, "naive": {}}
    levels = (1, 8) if quick else CONCURRENCY

    def naive_one(i: int, adapter: str = registry.resolve("support").peft_name) -> int:
        enc = tok([prompts[i]], return_tensors="pt")
        with torch.inference_mode():
            out = registry.model.generate(
                **enc,
                max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                adapter_names=[adapter],
            )
        return int(out.shape[1] - enc.input_ids.shape[1])

    naive_one(0)
    overhead = generation_overhead(registry, prompts[0])
    # naive and ours alternate per level, so a burst of load from other processes hits both alike
    with running_server(config) as (url, _):
        for c in levels:
            rows["naive"][c] = drive_naive(naive_one, max(2, c), c)
            print("smollm naive", c, rows["naive"][c], flush=True)
            bodies = [
                {
                    "model": "support",
                    "prompt": prompts[i],
                    "max_tokens": NEW_TOKENS,
                    "temperature": 0,
                    "stop": [],
                }
                for i in range(max(2, c))
            ]
            rows["ours"][c] = asyncio.run(drive_server(url, "/v1/completions", bodies, c))
            print("smollm ours", c, rows["ours"][c], flush=True)
    return {"rows": rows, "overhead": overhead}


def generation_overhead(registry: AdapterRegistry, prompt: str) -> dict[str, float]:
    """ms per generated token at batch 1: adapter off, on (unmerged), merged into the base weights."""
    tok = registry.tokenizer
    enc = tok([prompt], return_tensors="pt")
    model = registry.model

    def per_token(**kwargs: Any) -> float:
        with torch.inference_mode():
            start = time.perf_counter()
            model.generate(
                **enc,
                max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                **kwargs,
            )
            return (time.perf_counter() - start) * 1000 / NEW_TOKENS

    key = registry.resolve("support").peft_name
    result = adapter_overhead(model, key, per_token)
    result["unmerged_routed"] = min(per_token(adapter_names=[key]) for _ in range(ROUNDS))
    return result


def adapter_overhead(model: Any, key: str, measure: Callable[..., float]) -> dict[str, float]:
    """Best of ROUNDS for adapter off / unmerged / merged, the three interleaved within each round."""
    model.set_adapter(key)
    runs: dict[str, list[float]] = {"off": [], "unmerged": [], "merged": []}
    for _ in range(ROUNDS):
        with model.disable_adapter():
            runs["off"].append(measure())
        runs["unmerged"].append(measure())
        model.merge_adapter()
        runs["merged"].append(measure())
        model.unmerge_adapter()
    return {name: min(values) for name, values in runs.items()}


def bench_minilm(workdir: Path, quick: bool) -> dict[str, Any]:
    folder = make_adapters(MINILM, "sequence-classification", workdir, {"triage": 1}, LABELS)["triage"]
    config = ServeConfig(
        base_model=MINILM,
        task="sequence-classification",
        max_batch_size=32,
        batch_wait_ms=5,
        adapters=[AdapterSpec(name="triage", version="v1", uri=str(folder))],
    )
    registry = AdapterRegistry(config)
    registry.load_base()
    registry.load(config.adapters[0])
    tok = registry.tokenizer
    texts = [
        f"ticket {i}: my parcel has not arrived and I was charged twice, please help" for i in range(256)
    ]
    key = registry.resolve("triage").peft_name
    requests = 32 if quick else 128

    def naive_one(i: int, **kwargs: Any) -> int:
        with torch.inference_mode():
            registry.model(**tok([texts[i % len(texts)]], return_tensors="pt"), **kwargs)
        return 1

    rows: dict[str, Any] = {"ours": {}, "naive": {}}
    naive_one(0, adapter_names=[key])

    def ms_per_request(**kwargs: Any) -> float:
        start = time.perf_counter()
        for i in range(32):
            naive_one(i, **kwargs)
        return (time.perf_counter() - start) * 1000 / 32

    overhead = adapter_overhead(registry.model, key, ms_per_request)
    with running_server(config) as (url, _):
        for c in CONCURRENCY:
            rows["naive"][c] = drive_naive(lambda i: naive_one(i, adapter_names=[key]), requests, c)
            print("minilm naive", c, rows["naive"][c], flush=True)
            bodies = [{"model": "triage", "input": texts[i % len(texts)]} for i in range(requests)]
            rows["ours"][c] = asyncio.run(drive_server(url, "/v1/classify", bodies, c))
            print("minilm ours", c, rows["ours"][c], flush=True)
    return {"rows": rows, "overhead": overhead}


def table(rows: dict[str, Any], unit: str) -> str:
    lines = [f"| server | concurrency | p50 s | p99 s | requests/s | {unit}/s |", "|---|---|---|---|---|---|"]
    for name in ("naive", "ours"):
        for c, r in rows[name].items():
            lines.append(
                f"| {name} | {c} | {r['p50']:.2f} | {r['p99']:.2f} | {r['rps']:.2f} | {r['tps']:.1f} |"
            )
    speedups = [f"c={c}: {rows['ours'][c]['rps'] / rows['naive'][c]['rps']:.1f}x" for c in rows["ours"]]
    return "\n".join(lines) + "\n\nThroughput ours / naive: " + ", ".join(speedups) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(Path(__file__).with_name("SERVE_RESULTS.md")))
    parser.add_argument("--quick", action="store_true", help="fewer requests, no concurrency 32 for SmolLM2")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        started, load_before = time.time(), os.getloadavg()
        minilm = bench_minilm(Path(tmp) / "minilm", args.quick)
        smollm = bench_smollm(Path(tmp) / "smollm", args.quick)
        took, load_after = time.time() - started, os.getloadavg()
    o, m = smollm["overhead"], minilm["overhead"]
    text = f"""# Serving benchmark results

`python benchmarks/serve_latency.py` — one run, {time.strftime("%Y-%m-%d %H:%M")}, {took / 60:.0f} min.
Machine: {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), no GPU,
torch {torch.__version__} with {torch.get_num_threads()} threads. **Other engineers' tests may have been
running on the same 2 cores during this run** (1-minute load average {load_before[0]:.1f} at the start,
{load_after[0]:.1f} at the end), so
absolute numbers are noisy; naive and ours alternate per concurrency level in one process, both running
their model calls on one worker thread, so a burst of outside load hits both alike.

*naive*: one `generate()` / forward per request, peft adapter unmerged, one request at a time (concurrent
clients queue). *ours*: `kubetune serve` over HTTP (dynamic batching, max batch 32, peft unmerged,
mixed-adapter routing). Latency is per request, from arrival to the full answer.

## SmolLM2-135M (GGUF Q4_1 dequantized to fp32), 128-token prompt, 64 new tokens, greedy

{table(smollm["rows"], "generated tokens")}
Adapter overhead at batch 1 (ms per generated token): adapter off {o["off"]:.1f}, unmerged
{o["unmerged"]:.1f} (active adapter), unmerged via per-row routing (`adapter_names`, what the server
uses) {o["unmerged_routed"]:.1f}, merged {o["merged"]:.1f}.

## MiniLM-L6 sequence classification (one short ticket per request)

{table(minilm["rows"], "inputs")}
Adapter overhead at batch 1 (ms per request): adapter off {m["off"]:.1f}, unmerged {m["unmerged"]:.1f},
merged {m["merged"]:.1f}.

GPU (1B shape, static KV cache / CUDA graphs) was not run: this machine has no GPU.
"""
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
