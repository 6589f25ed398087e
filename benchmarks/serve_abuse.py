"""Abuse benchmark (not a test): what one hostile or careless client does to a serving pod.

A real `kubetune serve` process (SmolLM2-135M chat base + a MiniLM classifier adapter as a second
task, the layout of tests/integration/test_serve_overload.py) on loopback, a fresh process per case:

  chat-10mb         one 10 MB /v1/chat/completions body
  completions-10mb  one 10 MB /v1/completions body
  classify-10mb     one /v1/classify input of 10 MB
  classify-1024x10k 1,024 classify inputs of 10 KB each, and a small classify 1 s later
  chat-900kb        a 900 KB chat message (under the body limit)
  classify-256x3.5k 256 classify inputs of 3.5 KB (under both limits), and a small classify 1 s later
  surrogate         "\\ud800" (valid JSON) on classify, chat and completions
  wide-completions  a 64-prompt /v1/completions (16 tokens each), then a 4-token chat 0.5 s later
  batch-completions the same with 8 prompts (one full batch: what a client may still send)

Per case: the abusive request's status and time to answer (capped at --cap seconds), the longest
/healthz answer while it ran (a prober asks every 0.2 s), and the server's RSS before, at peak and
5 s after. `--tree` runs another checkout (e.g. `git worktree add /tmp/head HEAD`) for the
before/after table.

    python benchmarks/serve_abuse.py --tree /tmp/head --json /tmp/before.json
    python benchmarks/serve_abuse.py --json /tmp/after.json
    python benchmarks/serve_abuse.py --report /tmp/before.json /tmp/after.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
from test_serve_helpers import LABELS, MINILM, SMOLLM, free_port, is_ready, make_adapters, wait_for  # noqa: E402

MB10 = 10 * 1024 * 1024
CASES = (
    "chat-10mb",
    "completions-10mb",
    "classify-10mb",
    "classify-1024x10k",
    "surrogate",
    "wide-completions",
    "batch-completions",
    "chat-900kb",
    "classify-256x3.5k",
)


class Prober(threading.Thread):
    """Asks /healthz every 0.2 s and samples the server's RSS; keeps the longest answer."""

    def __init__(self, url: str, process: psutil.Process) -> None:
        super().__init__(daemon=True)
        self.url, self.process = url, process
        self.stop = threading.Event()
        self.longest = 0.0
        self.peak_rss = 0

    def run(self) -> None:
        with httpx.Client(timeout=600) as client:
            while not self.stop.is_set():
                started = time.perf_counter()
                with suppress(httpx.HTTPError):
                    client.get(f"{self.url}/healthz")
                self.longest = max(self.longest, time.perf_counter() - started)
                self.peak_rss = max(self.peak_rss, rss(self.process))
                self.stop.wait(0.2)


def rss(process: psutil.Process) -> int:
    return int(process.memory_info().rss)


@contextmanager
def server(tree: Path, workdir: Path, adapter: Path) -> Iterator[tuple[str, psutil.Process]]:
    port = free_port()
    config = workdir / "serve.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "baseModel": SMOLLM.wire(),
                "task": "causal-lm",
                "host": "127.0.0.1",
                "port": port,
                "maxNewTokens": 64,
                "tasks": [
                    {
                        "baseModel": MINILM.wire(),
                        "task": "sequence-classification",
                        "adapters": [{"name": "triage", "version": "v1", "uri": str(adapter)}],
                    }
                ],
            }
        )
    )
    env = {**os.environ, "PYTHONPATH": f"{tree / 'trainer'}:{tree}"}
    log = (workdir / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "kubetune_trainer.serve", "-f", str(config)],
        stdout=log,
        stderr=log,
        env=env,
        cwd=tree,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: is_ready(url) or proc.poll() is not None, 600, "/readyz")
        assert proc.poll() is None, (workdir / "server.log").read_text()[-3000:]
        yield url, psutil.Process(proc.pid)
    finally:
        proc.kill()
        proc.wait(30)


def timed_post(url: str, path: str, body: Any, cap: float) -> tuple[str, float]:
    """(status or 'timeout', seconds); `body` is sent as JSON text (bytes for big ones)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    started = time.perf_counter()
    try:
        response = httpx.post(
            f"{url}{path}", content=data, headers={"content-type": "application/json"}, timeout=cap
        )
        status = str(response.status_code)
    except httpx.TimeoutException:
        status = f"none in {cap:.0f} s"
    except httpx.HTTPError as err:
        status = type(err).__name__
    return status, time.perf_counter() - started


def abuse(url: str, process: psutil.Process, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    before = rss(process)
    prober = Prober(url, process)
    prober.start()
    try:
        result = run()
    finally:
        prober.stop.set()
        prober.join()
    time.sleep(5)
    return {
        **result,
        "healthz_max_s": round(prober.longest, 2),
        "rss_before_mb": round(before / 2**20),
        "rss_peak_mb": round(prober.peak_rss / 2**20),
        "rss_after_mb": round(rss(process) / 2**20),
    }


def chat_body(text: str, max_tokens: int = 1) -> dict[str, Any]:
    return {"model": "base", "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens}


def case(name: str, url: str, cap: float) -> dict[str, Any]:
    big = "word " * (MB10 // 5)
    if name == "chat-10mb":
        status, seconds = timed_post(url, "/v1/chat/completions", chat_body(big), cap)
    elif name == "completions-10mb":
        status, seconds = timed_post(
            url, "/v1/completions", {"model": "base", "prompt": big, "max_tokens": 1}, cap
        )
    elif name == "classify-10mb":
        status, seconds = timed_post(url, "/v1/classify", {"model": "triage", "input": big}, cap)
    elif name == "chat-900kb":  # under the body limit: the character bound and tokenizing off the loop
        status, seconds = timed_post(url, "/v1/chat/completions", chat_body("word " * 180_000), cap)
    elif name in ("classify-1024x10k", "classify-256x3.5k"):
        many, size = (1024, 10240) if name == "classify-1024x10k" else (256, 3500)
        body = {"model": "triage", "input": [f"ticket {i}: " + "word " * (size // 5) for i in range(many)]}
        big: dict[str, Any] = {}
        thread = threading.Thread(
            target=lambda: big.update(
                zip(("s", "t"), timed_post(url, "/v1/classify", body, cap), strict=True)
            )
        )
        thread.start()
        time.sleep(1.0)
        small_body = {"model": "triage", "input": "where is my parcel?"}
        small, small_s = timed_post(url, "/v1/classify", small_body, cap)
        thread.join()
        status, seconds = big["s"], big["t"]
        return {"status": status, "seconds": round(seconds, 2), "next_small": f"{small} in {small_s:.2f} s"}
    elif name == "surrogate":
        bodies = {
            "/v1/classify": b'{"model": "triage", "input": "\\ud800"}',
            "/v1/chat/completions": b'{"model": "base", "max_tokens": 1, '
            b'"messages": [{"role": "user", "content": "\\ud800"}]}',
            "/v1/completions": b'{"model": "base", "max_tokens": 1, "prompt": "\\ud800"}',
        }
        out = {}
        for path, data in bodies.items():
            response = httpx.post(f"{url}{path}", content=data, headers={"content-type": "application/json"})
            out[path] = f"{response.status_code} id={'x-request-id' in response.headers}"
        return {"status": "; ".join(f"{p} {s}" for p, s in out.items()), "seconds": 0.0}
    else:  # wide-completions: 64 prompts; batch-completions: 8 (the default maxBatchSize)
        _, alone = timed_post(url, "/v1/chat/completions", chat_body("Say hi", 4), cap)
        wide: dict[str, Any] = {}
        n = 64 if name == "wide-completions" else 8
        body = {"model": "base", "prompt": [f"Ticket {i}: my parcel is" for i in range(n)], "max_tokens": 16}
        thread = threading.Thread(
            target=lambda: wide.update(
                zip(("s", "t"), timed_post(url, "/v1/completions", body, cap), strict=True)
            )
        )
        thread.start()
        time.sleep(0.5)
        chat, chat_s = timed_post(url, "/v1/chat/completions", chat_body("Say hi", 4), cap)
        thread.join()
        return {
            "status": f"{wide['s']} in {wide['t']:.2f} s",
            "seconds": round(chat_s, 2),
            "next_small": f"chat {chat}; alone {alone:.2f} s",
        }
    return {"status": status, "seconds": round(seconds, 2)}


def measure(tree: Path, cap: float, only: list[str]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        adapter = make_adapters(MINILM, "sequence-classification", work / "adapters", {"triage": 1}, LABELS)
        for name in only:
            with server(tree, work, adapter["triage"]) as (url, process):
                timed_post(url, "/v1/chat/completions", chat_body("hi"), cap)  # warm
                results[name] = abuse(url, process, lambda name=name, url=url: case(name, url, cap))
            print(name, results[name], flush=True)
    return results


def report(before: dict[str, Any], after: dict[str, Any]) -> str:
    lines = [
        "| case | before: answer | before: time (s) | before: /healthz max (s) "
        "| before: RSS MB (base → peak → after) | after: answer | after: time (s) "
        "| after: /healthz max (s) | after: RSS MB (base → peak → after) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in CASES:
        row = [name]
        for side in (before, after):
            r = side.get(name)
            if r is None:
                row += ["-"] * 4
                continue
            answer = r["status"] + (f" (then: {r['next_small']})" if r.get("next_small") else "")
            mem = f"{r['rss_before_mb']} → {r['rss_peak_mb']} → {r['rss_after_mb']}"
            row += [answer, f"{r['seconds']:.2f}", f"{r['healthz_max_s']:.2f}", mem]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tree", type=Path, default=ROOT, help="checkout whose server to run")
    parser.add_argument("--cap", type=float, default=90.0, help="seconds a client waits for an answer")
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=CASES)
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--report", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    parser.add_argument("--out", type=Path, help="with --report: the markdown file for the table")
    args = parser.parse_args()
    if args.report:
        before, after = (json.loads(p.read_text()) for p in args.report)
        table = report(before, after)
        if args.out:
            args.out.write_text(table)
        print(table)
        return
    results = measure(args.tree.resolve(), args.cap, args.cases)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
