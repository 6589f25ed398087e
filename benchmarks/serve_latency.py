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
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve_generation as gen
from kubetune_trainer.models import package_model_dir
from kubetune_trainer.serve.config import AdapterSpec, ServeConfig
from test_serve_helpers import (
    LABELS,
    MINILM,
    SMOLLM,
    free_port,
    is_ready,
    loaded_registry,
    make_adapters,
    wait_for,
)

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


@contextmanager
def server_process(config: ServeConfig, workdir: Path) -> Iterator[tuple[str, Callable[[], float]]]:
    """`kubetune serve` in its own process, as a pod runs it; yields (url, peak RSS in MiB so far).

    Not in this process: an idle server thread here slowed this process's own generate() by ~50 %
    (padded batch-8 step 106 -> 165 ms, measured 2026-12-03), which would tax every variant."""
    config = config.model_copy(update={"host": "127.0.0.1", "port": free_port()})
    path = workdir / f"serve-{config.port}.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", by_alias=True, exclude={"admin_token"})))
    proc = subprocess.Popen(
        [sys.executable, "-m", "kubetune_trainer.serve", "-f", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=(workdir / f"serve-{config.port}.log").open("w"),
    )
    url = f"http://127.0.0.1:{config.port}"

    def peak_rss() -> float:
        status = Path(f"/proc/{proc.pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]

    log = workdir / f"serve-{config.port}.log"
    try:
        wait_for(lambda: is_ready(url) or proc.poll() is not None, 600, "the server's /readyz")
        assert proc.poll() is None, log.read_text()[-2000:]
        yield url, peak_rss
    finally:
        proc.terminate()
        proc.wait(60)
        if "Traceback" in log.read_text():  # a failed request: show why before the log is gone
            print(f"server log ({url}):\n{log.read_text()[-4000:]}", file=sys.stderr, flush=True)


def prompt_of(tokenizer: Any, i: int) -> str:
    words = f"Request {i}: summarise the customer ticket about a delayed parcel and a refund. " * 40
    return str(tokenizer.decode(tokenizer(words).input_ids[:PROMPT_TOKENS]))


def bench_smollm(
    workdir: Path, levels: tuple[int, ...], precision: str, variants: tuple[str, ...]
) -> dict[str, Any]:
    """The five generation variants, interleaved per concurrency level (serve_generation.py)."""
    folder = make_adapters(SMOLLM, "causal-lm", workdir, {"support": 1})["support"]
    config = ServeConfig(
        base_model=SMOLLM,
        task="causal-lm",
        max_batch_size=32,
        batch_wait_ms=10,
        max_new_tokens=NEW_TOKENS,
        precision=precision,  # type: ignore[arg-type]
        adapters=[AdapterSpec(name="support", version="v1", uri=str(folder))],
    )
    registry = loaded_registry(config)
    registry.unfold()  # the baselines run peft unmerged; the server (its own registry) folds
    tok = registry.tokenizer
    ids = [tok(prompt_of(tok, i)).input_ids[:PROMPT_TOKENS] for i in range(64)]
    texts = [tok.decode(i) for i in ids]
    key = registry.resolve("support").peft_name
    gguf = package_model_dir(SMOLLM.name.removeprefix("pkg://"), SMOLLM.gguf_file) / str(SMOLLM.gguf_file)
    rows: dict[str, dict[int, dict[str, float]]] = {v: {} for v in gen.VARIANTS}
    rss: dict[str, float] = {}
    if "llamacpp" in variants:
        gen.install_llamacpp()  # before any timing: the build would load the cores
    gen.run_naive(registry, ids[:1], key)  # warm-up
    int4 = config.model_copy(update={"quantize": "int4"})
    with server_process(config, workdir) as (url, rss_ours), server_process(int4, workdir) as (url4, rss4):
        for c in levels:
            runs = {
                "naive": partial(gen.run_naive, registry, ids[:c], key),
                "padded": partial(gen.run_padded, registry, ids[:c], key),
                "cb": partial(gen.run_cb, registry, ids[:c], key),
                "llamacpp": partial(gen.run_llamacpp, gguf, texts[:c]),
                "ours": partial(lambda u, t: asyncio.run(gen.run_ours(u, t, "support")), url, texts[:c]),
                "ours-int4": partial(
                    lambda u, t: asyncio.run(gen.run_ours(u, t, "support")), url4, texts[:c]
                ),
            }
            for name, run in runs.items():
                if name not in variants:
                    continue
                load = os.getloadavg()[0]
                try:
                    out = run()
                except Exception as err:  # a variant that cannot run here is reported, not hidden
                    print("smollm", name, c, "failed:", err, flush=True)
                    continue
                if out is None:
                    continue
                if name == "llamacpp":
                    out, rss["llamacpp"] = out  # type: ignore[misc]
                rows[name][c] = {**gen.summarise(out), "load": load}  # type: ignore[arg-type]
                print("smollm", name, c, rows[name][c], flush=True)
        rss["ours"], rss["ours-int4"] = rss_ours(), rss4()
    rss["python"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"rows": rows, "rss": rss}


def gen_table(rows: dict[str, dict[int, dict[str, float]]]) -> str:
    lines = [
        "| variant | concurrency | generated tok/s | TTFT p50 s | TTFT p99 s | per-token p50 ms | "
        "per-token p99 ms | latency p50 s | load avg at start |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, by_c in rows.items():
        for c, r in by_c.items():
            lines.append(
                f"| {name} | {c} | {r['tps']:.1f} | {r['ttft50']:.2f} | {r['ttft99']:.2f} | "
                f"{r['tpot50']:.0f} | {r['tpot99']:.0f} | {r['lat50']:.2f} | {r['load']:.1f} |"
            )
    ratios = []
    for mine in ("ours", "ours-int4"):
        for c, r in rows[mine].items():
            parts = [
                f"{r['tps'] / rows[v][c]['tps']:.2f}x {v}"
                for v in ("naive", "padded", "cb", "llamacpp")
                if c in rows[v]
            ]
            ratios.append(f"- {mine}, c={c}: " + ", ".join(parts))
        if 1 in rows[mine] and 1 in rows["naive"]:
            lat = rows[mine][1]["lat50"] / rows["naive"][1]["lat50"]
            ratios.append(f"- {mine}, c=1 latency / naive's: {lat:.2f}x")
    return "\n".join(lines) + "\n\nThroughput (generated tok/s) ratios:\n" + "\n".join(ratios) + "\n"


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
    registry = loaded_registry(config)
    registry.unfold()
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
    with server_process(config, workdir) as (url, _):
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


def smollm_section(
    result: dict[str, Any], took: float, loads: tuple[tuple[float, ...], ...], args: Any
) -> str:
    rss = result["rss"]
    llama = f"{rss['llamacpp']:.0f} MiB" if "llamacpp" in rss else "not run"
    return f"""## SmolLM2-135M (GGUF Q4_1 dequantized), 128-token prompt, 64 new tokens, greedy

`python benchmarks/serve_latency.py{" --quick" if args.quick else ""} --precision {args.precision}` —
{time.strftime("%Y-%m-%d %H:%M")} UTC, {took / 60:.0f} min. {os.cpu_count()} CPU cores
({platform.processor() or platform.machine()}, AVX-512 BF16), torch {torch.__version__},
{torch.get_num_threads()} threads. **No GPU was lent to this session**: the 1B / static-cache /
CUDA-graph shape was not run.
`uptime` load averages (1, 5, 15 min): {loads[0][0]:.1f} {loads[0][1]:.1f} {loads[0][2]:.1f} at the start,
{loads[1][0]:.1f} {loads[1][1]:.1f} {loads[1][2]:.1f} at the end (the table's last column is the 1-minute
load when each cell started). The variants run back to back for each concurrency level, each
answering one wave of `concurrency` requests that arrive together: naive, padded and cb in the
benchmark process, llama.cpp in a child process, both kubetune servers in processes of their own
(started before the first wave; an idle server costs ~0.3 % of a core).

naive: one generate() per request, peft adapter unmerged (adapter_names), one at a time. padded: one
generate() over the wave. cb: transformers' `generate_batch` (active adapter: it cannot route per
request). llamacpp: llama-cpp-python (own venv, built from source: ggml's AVX-512 kernels) on the
same GGUF, one request at a time, streaming. ours: `kubetune serve` over HTTP, streamed
`/v1/completions`, continuous batching, precision {args.precision}, its one adapter folded into the
base weights (mergeSingleAdapter). ours-int4: the same with `quantize: int4` (the 210 Q4_1 matrices
as 4-bit codes, exact; bf16 kernel inputs; the LoRA unmerged on top; the lm_head in fp32). The HTTP
client runs in the benchmark process. TTFT is from the wave's arrival; per-token is
(end - first token) / 63.

{gen_table(result["rows"])}
Peak RSS: benchmark process (naive/padded/cb share its model) {rss["python"]:.0f} MiB; server
{rss.get("ours", 0):.0f} MiB, int4 server {rss.get("ours-int4", 0):.0f} MiB; llama-cpp-python process {llama}.
"""


def minilm_section(result: dict[str, Any], loads: tuple[tuple[float, ...], ...]) -> str:
    o = result["overhead"]
    return f"""## MiniLM-L6 sequence classification (one short ticket per request)

`python benchmarks/serve_latency.py --minilm` — {time.strftime("%Y-%m-%d %H:%M")} UTC, {os.cpu_count()} CPU
cores, torch {torch.__version__}, {torch.get_num_threads()} threads, no GPU. `uptime` load (1, 5, 15 min):
{" ".join(f"{x:.1f}" for x in loads[0])} at the start, {" ".join(f"{x:.1f}" for x in loads[1])} at the end.
naive: one forward per request (peft adapter unmerged), one at a time, `concurrency` clients queueing for
it; ours: `kubetune serve` over HTTP, `/v1/classify`, dynamic batching (max batch 32, 5 ms window),
one adapter loaded (so folded into the base: mergeSingleAdapter); the drift monitor is idle (these
made-up adapters have no reference statistics; drift_overhead.py measures it). The server runs in
a process of its own; the HTTP client in the benchmark process.

{table(result["rows"], "inputs")}
Adapter overhead at batch 1 (ms per request, best of {ROUNDS} interleaved): adapter off {o["off"]:.1f},
unmerged {o["unmerged"]:.1f}, merged {o["merged"]:.1f}.
"""


def splice(doc: str, header: str, section: str) -> str:
    """Replace the `## header...` section of doc (up to the next `## `) by `section`."""
    match = re.search(rf"^## {re.escape(header)}.*?(?=^## |\Z)", doc, flags=re.S | re.M)
    return doc[: match.start()] + section + "\n" + doc[match.end() :] if match else doc + "\n" + section


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(Path(__file__).with_name("SERVE_RESULTS.md")))
    parser.add_argument("--quick", action="store_true", help="concurrency 1 and 8 only")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--variants", default=",".join(gen.VARIANTS), help="comma-separated subset")
    parser.add_argument("--levels", default="", help="comma-separated concurrency levels (default 1,8,32)")
    parser.add_argument("--minilm", action="store_true", help="also run the MiniLM classification table")
    parser.add_argument("--no-smollm", action="store_true", help="skip the SmolLM2 generation table")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        started, load_before = time.time(), os.getloadavg()
        doc = Path(args.out).read_text() if Path(args.out).exists() else "# Serving benchmark results\n"
        if args.minilm:
            minilm = bench_minilm(Path(tmp) / "minilm", args.quick)
            doc = splice(doc, "MiniLM-L6", minilm_section(minilm, (load_before, os.getloadavg())))
            print(table(minilm["rows"], "inputs"), minilm["overhead"], flush=True)
        if args.no_smollm:
            Path(args.out).write_text(doc)
            return 0
        levels = (
            tuple(int(c) for c in args.levels.split(","))
            if args.levels
            else CONCURRENCY[: 2 if args.quick else 3]
        )
        variants = tuple(args.variants.split(","))
        smollm = bench_smollm(Path(tmp) / "smollm", levels, args.precision, variants)
        took, load_after = time.time() - started, os.getloadavg()
    section = smollm_section(smollm, took, (load_before, load_after), args)
    Path(args.out).write_text(splice(doc, "SmolLM2", section))
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
