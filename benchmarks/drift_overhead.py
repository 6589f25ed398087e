"""Drift-monitor overhead benchmark (not a test): /v1/classify p50/p99 with monitoring on vs off.

Two real servers on the real MiniLM with the same adapter, one with `monitoring.enabled: false`, one with
the drift monitor on (hidden states from the same forward pass, the inline scores, MMD every window/5
inputs on its background thread) and a reference_stats.json beside the adapter. The two are driven in
interleaved rounds in the same run, so machine noise hits both alike. Also the monitor's own cost per
request (DriftMonitor.observe, no HTTP, no model), which does not depend on machine load.

    python benchmarks/drift_overhead.py [--out benchmarks/SERVE_RESULTS.md] [--requests 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from kubetune_trainer.serve.config import AdapterSpec, ServeConfig, ServeMonitoring
from kubetune_trainer.serve.drift import DriftMonitor
from kubetune_trainer.serve.metrics import ServeMetrics
from serve_latency import server_process, splice
from test_serve_helpers import LABELS, MINILM, make_adapters, wait_for

TEXTS = [
    "I was charged twice for my order and want a refund",
    "cannot log in after the password reset, the code never arrives",
    "where is my parcel? tracking has not moved for a week",
    "please cancel my subscription at the end of the month",
]
ROUNDS = 4
CONCURRENCY = (1, 8)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def reference(dim: int = 384, seed: int = 0) -> dict[str, object]:
    rng = np.random.default_rng(seed)
    sample = rng.normal(size=(256, dim)).round(5)
    return {
        "rows": 256,
        "predictionDistribution": {label: 1 / len(LABELS) for label in LABELS},
        "confidenceHistogram": {"edges": list(np.linspace(0, 1, 11)), "counts": [0] * 5 + [1] * 5},
        "embeddingCentroid": sample.mean(0).tolist(),
        "embeddingSample": sample.tolist(),
        "inputLengthHistogram": {"edges": list(np.linspace(0, 40, 11)), "counts": [1] * 10},
    }


async def drive(url: str, requests: int, concurrency: int) -> list[float]:
    latencies: list[float] = []
    queue = list(range(requests))
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def worker() -> None:
            while queue:
                i = queue.pop()
                start = time.perf_counter()
                r = await client.post(
                    "/v1/classify", json={"model": "intent", "input": TEXTS[i % len(TEXTS)]}
                )
                r.raise_for_status()
                latencies.append(time.perf_counter() - start)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def observe_cost(window: int = 500, calls: int = 5000) -> tuple[float, float]:
    """Microseconds per DriftMonitor.observe of one input (window full), and per refresh (what a
    /metrics scrape adds: the scores and 6 gauges of one window)."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "reference_stats.json").write_text(json.dumps(reference()))
        metrics = ServeMetrics()
        monitor = DriftMonitor(metrics.drift_score, metrics.drift_window, window, mmd_every=window // 5)
        monitor.load_reference("m", "v1", Path(tmp))
        emb = np.random.default_rng(1).normal(size=384).astype(np.float32)
        for _ in range(window):
            monitor.observe("m", "v1", [LABELS[0]], [0.9], [12], [emb])
        start = time.perf_counter()
        for i in range(calls):
            monitor.observe("m", "v1", [LABELS[i % 3]], [0.9], [12], [emb])
        cost = (time.perf_counter() - start) / calls * 1e6
        start = time.perf_counter()
        for i in range(200):
            monitor.observe("m", "v1", [LABELS[i % 3]], [0.9], [12], [emb])
            monitor.refresh()
        scrape = (time.perf_counter() - start) / 200 * 1e6 - cost
        monitor.shutdown()
    return cost, scrape


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path)
    parser.add_argument("--requests", type=int, default=400)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_adapters(MINILM, "sequence-classification", Path(tmp), {"intent": 3}, LABELS)["intent"]
        (folder / "reference_stats.json").write_text(json.dumps(reference()))
        spec = AdapterSpec(name="intent", version="v1", uri=str(folder))
        base = ServeConfig(
            base_model=MINILM, task="sequence-classification", adapters=[spec], batch_wait_ms=5
        )
        off_cfg = base.model_copy(update={"monitoring": ServeMonitoring(enabled=False)})
        on_cfg = base.model_copy(update={"monitoring": ServeMonitoring(enabled=True, window_size=500)})
        results: dict[tuple[str, int], list[float]] = {}
        load_before = os.getloadavg()
        work = Path(tmp)
        with server_process(off_cfg, work) as (off_url, _), server_process(on_cfg, work) as (on_url, _):
            for c in CONCURRENCY:  # warm-up, then interleaved rounds
                asyncio.run(drive(off_url, 20, c))
                asyncio.run(drive(on_url, 20, c))
            for _ in range(ROUNDS):
                for c in CONCURRENCY:
                    for mode, url in (("off", off_url), ("on", on_url)):
                        results.setdefault((mode, c), []).extend(
                            asyncio.run(drive(url, args.requests // ROUNDS, c))
                        )
            # a scrape scores the window and starts the MMD in the background; a later one shows it
            wait_for(lambda: 'kind="embedding_mmd"' in httpx.get(f"{on_url}/metrics").text, 30, "the MMD")
    per_input, per_scrape = observe_cost()
    lines = [
        "| concurrency | monitor | p50 ms | p99 ms | requests |",
        "|---|---|---|---|---|",
    ]
    overhead = []
    for c in CONCURRENCY:
        for mode in ("off", "on"):
            lat = results[(mode, c)]
            lines.append(
                f"| {c} | {mode} | {pct(lat, 0.5) * 1e3:.1f} | {pct(lat, 0.99) * 1e3:.1f} | {len(lat)} |"
            )
        off50, on50 = pct(results[("off", c)], 0.5), pct(results[("on", c)], 0.5)
        overhead.append(f"c={c}: {(on50 / off50 - 1) * 100:+.1f} %")
    report = "\n".join(
        [
            "## Drift monitor overhead (benchmarks/drift_overhead.py)",
            "",
            f"{time.strftime('%Y-%m-%d %H:%M')} UTC. MiniLM, one adapter, /v1/classify one input per "
            f"request, {os.cpu_count()} cores ({platform.machine()}), each server in its own process; "
            f"monitor off vs on driven in {ROUNDS} interleaved rounds in the same run. `uptime` load "
            f"(1/5/15 min) {' '.join(f'{x:.1f}' for x in load_before)} at the start, "
            f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} at the end.",
            "",
            *lines,
            "",
            f"p50 added by the monitor: {', '.join(overhead)}. "
            f"DriftMonitor.observe alone: {per_input:.0f} µs per input (window 500 full); the scores "
            f"and gauges are set per /metrics scrape, {per_scrape:.0f} µs each.",
            "",
        ]
    )
    print(report)
    if args.out:
        doc = args.out.read_text() if args.out.exists() else "# Serving benchmark results\n"
        args.out.write_text(splice(doc, "Drift monitor overhead", report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
