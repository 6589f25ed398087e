"""Overload benchmark (not a test): does the queue bound keep admitted requests fast, and are the
rest refused fast?

The real server (SmolLM2-135M, one LoRA adapter, /v1/completions, greedy, NEW_TOKENS tokens) on
loopback, three phases:
  1. idle — one client, requests back to back: p50/p99 latency;
  2. capacity — `maxQueued` clients back to back: the throughput the server sustains (requests/s);
  3. overload — open-loop arrivals at 4x that throughput for DURATION seconds: p50/p99 of the admitted
     (200) requests, the share shed (429) and how fast a 429 comes back.
Goal: admitted p99 at 4x overload within 2x the idle p99, 429s in milliseconds.

    python benchmarks/serve_overload.py [--out benchmarks/SERVE_RESULTS.md] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
from kubetune_trainer.serve.config import AdapterSpec, ServeConfig
from test_serve_helpers import SMOLLM, make_adapters, running_server

NEW_TOKENS = 16
OVERLOAD = 4.0
SECTION = "## Overload: bounded queue and load shedding (benchmarks/serve_overload.py)"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


def body(i: int) -> dict[str, Any]:
    return {"model": "chat", "prompt": f"Ticket {i}: my parcel is late, please", "max_tokens": NEW_TOKENS}


async def one(client: httpx.AsyncClient, url: str, i: int) -> tuple[int, float]:
    started = time.perf_counter()
    response = await client.post(f"{url}/v1/completions", json=body(i))
    return response.status_code, time.perf_counter() - started


async def closed_loop(url: str, clients: int, requests: int) -> tuple[list[float], float]:
    """`clients` clients back to back; latencies and the wall time."""
    queue = list(range(requests))
    latencies: list[float] = []

    async def worker(client: httpx.AsyncClient) -> None:
        while queue:
            status, seconds = await one(client, url, queue.pop())
            assert status == 200, status
            latencies.append(seconds)

    async with httpx.AsyncClient(timeout=600) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        return latencies, time.perf_counter() - started


async def open_loop(url: str, rate: float, duration: float) -> list[tuple[int, float]]:
    """Requests start every 1/rate s for `duration` s whatever the server does (clients do not wait)."""
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        tasks = []
        started = time.perf_counter()
        i = 0
        while time.perf_counter() - started < duration:
            tasks.append(asyncio.create_task(one(client, url, i)))
            i += 1
            await asyncio.sleep(max(0.0, started + i / rate - time.perf_counter()))
        return list(await asyncio.gather(*tasks))


def run(quick: bool, max_queued: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        folders = make_adapters(SMOLLM, "causal-lm", Path(tmp), {"chat": 11})
        config = ServeConfig(
            base_model=SMOLLM,
            task="causal-lm",
            max_batch_size=max_queued,
            max_queued=max_queued,
            max_new_tokens=NEW_TOKENS,
            adapters=[AdapterSpec(name="chat", version="v1", uri=str(folders["chat"]))],
        )
        with running_server(config) as (url, _):
            asyncio.run(closed_loop(url, 1, 3))  # warm-up
            load_before = os.getloadavg()
            idle, _ = asyncio.run(closed_loop(url, 1, 10 if quick else 30))
            cap_lat, cap_wall = asyncio.run(closed_loop(url, max_queued, 12 if quick else 40))
            capacity = len(cap_lat) / cap_wall
            results = asyncio.run(open_loop(url, OVERLOAD * capacity, 15 if quick else 45))
            load_after = os.getloadavg()
    admitted = [s for code, s in results if code == 200]
    shed = [s for code, s in results if code == 429]
    other = [code for code, _ in results if code not in (200, 429)]
    return {
        "idle": idle,
        "capacity_rps": capacity,
        "capacity": cap_lat,
        "admitted": admitted,
        "shed": shed,
        "other": other,
        "offered_rps": OVERLOAD * capacity,
        "load": (load_before, load_after),
        "max_queued": max_queued,
    }


def render(r: dict[str, Any]) -> str:
    ms = lambda v: f"{v * 1000:.0f}"  # noqa: E731
    n = r["max_queued"]
    total = len(r["admitted"]) + len(r["shed"]) + len(r["other"])
    idle_p99, over_p99 = pct(r["idle"], 0.99), pct(r["admitted"], 0.99)
    rows = [
        f"| idle (1 client) | {len(r['idle'])} | {ms(pct(r['idle'], 0.5))} | {ms(idle_p99)} | 0 % | - |",
        f"| capacity ({n} clients) | {len(r['capacity'])} | {ms(pct(r['capacity'], 0.5))} | "
        f"{ms(pct(r['capacity'], 0.99))} | 0 % | - |",
        f"| {OVERLOAD:.0f}x overload (open loop, {r['offered_rps']:.2f} req/s) | {total} | "
        f"{ms(pct(r['admitted'], 0.5))} | {ms(over_p99)} | {100 * len(r['shed']) / max(1, total):.0f} % | "
        f"{ms(pct(r['shed'], 0.5))} / {ms(pct(r['shed'], 0.99))} |",
    ]
    (b1, b5, b15), (a1, a5, a15) = r["load"]
    return "\n".join(
        [
            heading(n),
            "",
            f"SmolLM2-135M + one LoRA adapter (r=4, q/v), /v1/completions, {NEW_TOKENS} new tokens, greedy; "
            f"maxBatchSize {n}, maxQueued {n}; loopback, 2 shared CPU cores. Load average "
            f"(1/5/15 min) {b1:.2f}/{b5:.2f}/{b15:.2f} before, {a1:.2f}/{a5:.2f}/{a15:.2f} after. Capacity "
            f"measured first: {r['capacity_rps']:.2f} req/s; the overload phase offers {OVERLOAD:.0f}x that.",
            "",
            "| phase | requests | admitted p50 ms | admitted p99 ms | shed (429) | 429 p50 / p99 ms |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            f"Admitted p99 at {OVERLOAD:.0f}x overload / idle p99: {over_p99 / idle_p99:.2f}x (goal <= 2x). "
            f"Other statuses: {sorted(set(r['other'])) or 'none'}. Re-run: "
            f"`python benchmarks/serve_overload.py --max-queued {n} --out benchmarks/SERVE_RESULTS.md`.",
            "",
        ]
    )


def heading(max_queued: int) -> str:
    return f"### maxQueued {max_queued}"


def write_section(path: Path, max_queued: int, text: str) -> None:
    """This benchmark's section holds one table per maxQueued; a re-run replaces its own."""
    doc = path.read_text() if path.exists() else ""
    head, _, rest = doc.partition(SECTION)
    section, sep, after = rest.partition("\n## ")
    runs = {block.split("\n", 1)[0]: "### " + block.strip("\n") for block in section.split("\n### ")[1:]}
    runs[heading(max_queued)[4:]] = text.strip("\n")
    body = "\n\n".join(runs[k] for k in sorted(runs))
    path.write_text(f"{head.rstrip()}\n\n{SECTION}\n\n{body}\n" + (f"\n## {after}" if sep else ""))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--max-queued", type=int, default=4, help="also the batch size")
    args = parser.parse_args()
    text = render(run(args.quick, args.max_queued))
    print(text)
    if args.out is not None:
        write_section(args.out, args.max_queued, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
