"""vLLM vs kubetune's server as the engine behind the kubetune front (issue 24, item 5), on the same
base and the same adapters our trainer produced:

  1. throughput: streamed chat through the front at 1/8/32 concurrent clients (greedy, fixed new
     tokens): generated tokens/s over the level, TTFT and latency p50/p95;
  2. rollout under load (8 clients): the front's ServeConfig file switches v1 -> v2; failed requests
     (must be 0), seconds until the engine lists only v2, answers by version;
  3. restart: a new front on the running engine, seconds until /readyz is 200.

Each engine is a process (`vllm serve ... --enable-lora` with VLLM_ALLOW_RUNTIME_LORA_UPDATING, or
`python -m kubetune_trainer.serve` with the base only), driven by the front only through the
endpoints vLLM has. Results are appended to benchmarks/VLLM_RESULTS.md.

  python benchmarks/vllm_rollout.py --base /models/SmolLM2-1.7B-Instruct \\
      --adapter-v1 out/triage/a/adapter --adapter-v2 out/triage/b/adapter --engines vllm,kubetune
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-admin-token"
PROMPT = [{"role": "user", "content": "A customer writes: my parcel never arrived. Reply in one paragraph."}]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, path: str, proc: subprocess.Popen[bytes], timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}{path}", timeout=2).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url}{path} not ready after {timeout:.0f} s")


@contextmanager
def process(args: list[str], env: dict[str, str], log: Path) -> Any:
    proc = subprocess.Popen(args, stdout=log.open("wb"), stderr=subprocess.STDOUT, env={**os.environ, **env})
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def base_model(base: str) -> dict[str, str]:
    """`path` or `pkg://name:file.gguf` (kubetune only: a packaged GGUF base, for a CPU smoke run)."""
    name, _, gguf = base.partition(".gguf")[0].rpartition(":") if base.endswith(".gguf") else (base, "", "")
    return {"name": name, "ggufFile": gguf + ".gguf"} if gguf else {"name": base}


def engine_command(
    engine: str, base: str, port: int, rank: int, work: Path
) -> tuple[list[str], dict[str, str]]:
    if engine == "vllm":
        args = ["vllm", "serve", base, "--host", "127.0.0.1", "--port", str(port), "--enable-lora"]
        args += ["--max-loras", "4", "--max-lora-rank", str(rank), "--api-key", TOKEN]
        return args, {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
    config = work / "engine.yaml"
    doc = {"baseModel": base_model(base), "task": "causal-lm", "host": "127.0.0.1", "port": port}
    config.write_text(yaml.safe_dump({**doc, "maxInputTokens": 1024, "maxNewTokens": 512, "maxQueued": 256}))
    return [sys.executable, "-m", "kubetune_trainer.serve", "-f", str(config)], {
        "KUBETUNE_ADMIN_TOKEN": TOKEN
    }


def write_front(path: Path, base: str, engine_url: str, port: int, adapters: dict[str, str]) -> None:
    doc = {
        "baseModel": base_model(base),
        "task": "causal-lm",
        "host": "127.0.0.1",
        "port": port,
        "maxQueued": 256,
        "engine": {"url": engine_url, "syncIntervalS": 0.5},
        "adapters": [{"name": "triage", "version": v, "uri": u} for v, u in adapters.items()],
    }
    path.write_text(yaml.safe_dump(doc))


async def one_chat(client: httpx.AsyncClient, url: str, tokens: int) -> dict[str, Any]:
    body = {
        "model": "triage",
        "messages": PROMPT,
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,  # vLLM: always `tokens` new tokens; kubetune ignores unknown fields
    }
    started = time.perf_counter()
    first, generated, version, ok = None, 0, "", True
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as answer:
        ok = answer.status_code == 200
        async for line in answer.aiter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if "error" in event:
                ok = False
            text = "".join((c.get("delta") or {}).get("content") or "" for c in event.get("choices") or [])
            if text and first is None:  # the first token, not the role-only chunk
                first = time.perf_counter()
            version = event.get("system_fingerprint") or version
            if event.get("usage"):
                generated = event["usage"]["completion_tokens"]
    end = time.perf_counter()
    return {
        "ok": ok,
        "ttft": (first or end) - started,
        "latency": end - started,
        "tokens": generated,
        "v": version,
    }


async def level(url: str, clients: int, per_client: int, tokens: int) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=600) as client:

        async def worker() -> list[dict[str, Any]]:
            return [await one_chat(client, url, tokens) for _ in range(per_client)]

        started = time.perf_counter()
        results = [r for rs in await asyncio.gather(*(worker() for _ in range(clients))) for r in rs]
        wall = time.perf_counter() - started
    ttft = sorted(r["ttft"] for r in results)
    latency = sorted(r["latency"] for r in results)
    return {
        "clients": clients,
        "requests": len(results),
        "failed": sum(not r["ok"] for r in results),
        "tokens_per_s": sum(r["tokens"] for r in results) / wall,
        "ttft_p50": statistics.median(ttft),
        "latency_p50": statistics.median(latency),
        "latency_p95": latency[int(0.95 * (len(latency) - 1))],
    }


def engine_loras(url: str) -> set[str]:
    cards = httpx.get(f"{url}/v1/models", headers={"authorization": f"Bearer {TOKEN}"}).json()["data"]
    return {c["id"] for c in cards if c.get("parent") and not c.get("aliasOf")}


async def rollout(front: Path, front_url: str, engine_url: str, args: argparse.Namespace) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    stop = asyncio.Event()

    async def client_loop(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            results.append(await one_chat(client, front_url, 16))

    async with httpx.AsyncClient(timeout=600) as client:
        loops = [asyncio.create_task(client_loop(client)) for _ in range(8)]
        await asyncio.sleep(3)
        started = time.monotonic()
        write_front(front, args.base, engine_url, int(front_url.rsplit(":", 1)[1]), {"v2": args.adapter_v2})
        while engine_loras(engine_url) != {"triage@v2"}:
            await asyncio.sleep(0.1)
        switched = time.monotonic() - started
        await asyncio.sleep(3)
        stop.set()
        await asyncio.gather(*loops)
    versions = sorted({r["v"] for r in results})
    return {
        "requests": len(results),
        "failed": sum(not r["ok"] for r in results),
        "switch_s": switched,
        "versions": versions,
    }


def run_engine(engine: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    engine_port, front_port = free_port(), free_port()
    engine_url, front_url = f"http://127.0.0.1:{engine_port}", f"http://127.0.0.1:{front_port}"
    command, env = engine_command(engine, args.base, engine_port, args.max_lora_rank, work)
    front = work / f"front-{engine}.yaml"
    front_cmd = [sys.executable, "-m", "kubetune_trainer.serve", "-f", str(front)]
    out: dict[str, Any] = {"engine": engine}
    with process(command, env, work / f"{engine}.log") as proc:
        out["engine_start_s"] = wait_ready(
            engine_url, "/health" if engine == "vllm" else "/readyz", proc, 1800
        )
        write_front(front, args.base, engine_url, front_port, {"v1": args.adapter_v1})
        with process(front_cmd, {"KUBETUNE_ENGINE_API_KEY": TOKEN}, work / f"front-{engine}.log") as fp:
            out["front_ready_s"] = wait_ready(front_url, "/readyz", fp, 600)
            asyncio.run(level(front_url, 1, 1, 8))  # warm-up
            out["levels"] = [
                asyncio.run(level(front_url, c, args.per_client, args.tokens)) for c in args.clients
            ]
            out["rollout"] = asyncio.run(rollout(front, front_url, engine_url, args))
        write_front(front, args.base, engine_url, front_port, {"v1": args.adapter_v1, "v2": args.adapter_v2})
        with process(front_cmd, {"KUBETUNE_ENGINE_API_KEY": TOKEN}, work / f"front2-{engine}.log") as fp:
            out["restart_ready_s"] = wait_ready(front_url, "/readyz", fp, 600)
            out["after_restart"] = sorted(engine_loras(engine_url))
    return out


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"\n## {time.strftime('%Y-%m-%d %H:%M')} — base {args.base}, {args.tokens} new tokens, "
        f"{args.per_client} requests per client\n",
        "| engine | clients | tokens/s | TTFT p50 s | latency p50 s | p95 s | failed |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for lv in r["levels"]:
            lines.append(
                f"| {r['engine']} | {lv['clients']} | {lv['tokens_per_s']:.1f} | {lv['ttft_p50']:.3f} | "
                f"{lv['latency_p50']:.2f} | {lv['latency_p95']:.2f} | {lv['failed']} |"
            )
    lines.append("")
    for r in results:
        ro = r["rollout"]
        lines.append(
            f"- {r['engine']}: engine start {r['engine_start_s']:.0f} s, front ready "
            f"{r['front_ready_s']:.1f} s; rollout v1->v2 under 8 clients: {ro['requests']} requests, "
            f"{ro['failed']} failed, engine held only v2 after {ro['switch_s']:.1f} s, answered by "
            f"{ro['versions']}; restarted front ready after "
            f"{r['restart_ready_s']:.1f} s holding {r['after_restart']}"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", required=True, help="base model: local HF folder or hub id (both engines)")
    parser.add_argument("--adapter-v1", required=True, help="adapter folder from kubetune train (v1)")
    parser.add_argument("--adapter-v2", required=True, help="adapter folder from kubetune train (v2)")
    parser.add_argument("--engines", default="vllm,kubetune")
    parser.add_argument("--clients", type=lambda s: [int(c) for c in s.split(",")], default=[1, 8, 32])
    parser.add_argument("--per-client", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--max-lora-rank", type=int, default=16)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/VLLM_RESULTS.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = [run_engine(e, args, Path(tmp)) for e in args.engines.split(",")]
    text = report(results, args)
    print(text)
    with args.out.open("a") as f:
        f.write(text)
    bad = [r["engine"] for r in results if r["rollout"]["failed"] or any(lv["failed"] for lv in r["levels"])]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
