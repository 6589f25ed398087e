"""Chaos for the server: two real `kubetune serve` replicas (MiniLM, classification) under a steady
load, an adapter hot swap (triage v1 -> v2) sent to both, and one replica SIGKILLed while its swap is
in flight. Only the requests in flight on the killed replica fail (as transport errors: the
connection drops); the other replica answers every request, during and after its swap, and ends up
serving v2.

The delay between sending the swap and the kill is seeded (KUBETUNE_CHAOS_SEED, default 11).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from test_serve_helpers import ADMIN_TOKEN, LABELS, MINILM, free_port, is_ready, make_adapters, wait_for

SEED = int(os.environ.get("KUBETUNE_CHAOS_SEED", "11"))
AUTH = {"authorization": f"Bearer {ADMIN_TOKEN}"}
TEXTS = ["I was charged twice for my order", "cannot log in after the password reset", "where is my parcel?"]
CLIENTS = 2  # load threads per replica


@dataclass
class Call:
    replica: str
    started: float
    ended: float
    status: int | None  # None: a transport error (connection refused / dropped)
    fingerprint: str | None
    error: str = ""


class Replica:
    def __init__(self, name: str, folder: Path, workdir: Path) -> None:
        self.name, self.port = name, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = workdir / f"{name}.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "baseModel": MINILM.wire(),
                    "task": "sequence-classification",
                    "host": "127.0.0.1",
                    "port": self.port,
                    "batchWaitMs": 5,
                    "maxInputTokens": 64,
                    "adapters": [{"name": "triage", "version": "v1", "uri": str(folder)}],
                }
            )
        )
        self.log = workdir / f"{name}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kubetune_trainer.serve", "-f", str(config)],
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            env={**os.environ, "KUBETUNE_ADMIN_TOKEN": ADMIN_TOKEN},
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[tuple[Replica, Replica, dict[str, Path]]]:
    folders = make_adapters(
        MINILM, "sequence-classification", tmp_path / "adapters", {"v1": 1, "v2": 2}, LABELS
    )
    a, b = Replica("a", folders["v1"], tmp_path), Replica("b", folders["v1"], tmp_path)
    try:
        for r in (a, b):
            wait_for(lambda r=r: is_ready(r.url) or r.proc.poll() is not None, 300, f"{r.name} /readyz")
            assert r.proc.poll() is None, r.log.read_text()[-3000:]
        yield a, b, folders
    finally:
        a.stop()
        b.stop()


def load(replica: Replica, calls: list[Call], stop: threading.Event, lock: threading.Lock) -> None:
    """Classify requests one after another; a client of a dead replica gives up at its first error
    (as a Service drops a pod whose readiness fails: no new requests go there)."""
    with httpx.Client(timeout=60) as client:
        i = 0
        while not stop.is_set():
            started = time.monotonic()
            try:
                response = client.post(
                    f"{replica.url}/v1/classify", json={"model": "triage", "input": [TEXTS[i % len(TEXTS)]]}
                )
                ok = response.status_code == 200
                call = Call(
                    replica.name,
                    started,
                    time.monotonic(),
                    response.status_code,
                    response.json().get("system_fingerprint") if ok else None,
                    "" if ok else response.text[:300],
                )
            except httpx.TransportError as err:
                call = Call(replica.name, started, time.monotonic(), None, None, repr(err))
            with lock:
                calls.append(call)
            if call.status is None:
                return
            i += 1


def test_killing_one_replica_mid_hot_swap_fails_only_its_in_flight_requests(
    replicas: tuple[Replica, Replica, dict[str, Path]],
) -> None:
    a, b, folders = replicas
    rng = random.Random(SEED)
    calls: list[Call] = []
    stop, lock = threading.Event(), threading.Lock()
    clients = [
        threading.Thread(target=load, args=(r, calls, stop, lock), daemon=True)
        for r in (a, b)
        for _ in range(CLIENTS)
    ]
    for thread in clients:
        thread.start()
    try:
        wait_for(
            lambda: all(sum(c.replica == r and c.status == 200 for c in calls) >= 5 for r in "ab"),
            120,
            "both replicas answering",
        )
        swap_body = {"name": "triage", "version": "v2", "uri": str(folders["v2"])}
        swaps: dict[str, httpx.Response | Exception] = {}

        def swap(r: Replica) -> None:
            try:
                swaps[r.name] = httpx.post(
                    f"{r.url}/admin/adapters", json=swap_body, headers=AUTH, timeout=120
                )
            except httpx.TransportError as err:
                swaps[r.name] = err

        swappers = [threading.Thread(target=swap, args=(r,)) for r in (a, b)]
        for thread in swappers:
            thread.start()
        delay = rng.uniform(0.0, 0.3)
        print(f"KUBETUNE_CHAOS_SEED={SEED}: SIGKILL replica a {delay:.2f} s into its hot swap")
        time.sleep(delay)  # the seeded point inside the swap
        a.proc.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        a.proc.wait(30)
        for thread in swappers:
            thread.join(120)
        print(f"replica a's swap: {swaps['a']!r}")  # a dropped connection when the kill landed inside it
        response = swaps["b"]
        assert isinstance(response, httpx.Response) and response.status_code == 200, response
        swapped_at = time.monotonic()
        wait_for(
            lambda: sum(c.replica == "b" and c.fingerprint == "triage@v2" for c in calls) >= 5,
            60,
            "replica b serving v2",
        )
    finally:
        stop.set()
        for thread in clients:
            thread.join(60)

    on_b = [c for c in calls if c.replica == "b"]
    assert on_b and all(c.status == 200 for c in on_b), [c for c in on_b if c.status != 200][:3]
    # b switched once: v1 until the swap, v2 for every request started after its answer
    assert {c.fingerprint for c in on_b if c.ended < killed_at} == {"triage@v1"}
    assert {c.fingerprint for c in on_b if c.started > swapped_at} == {"triage@v2"}
    fingerprints = [c.fingerprint for c in sorted(on_b, key=lambda c: c.ended)]
    assert fingerprints == sorted(fingerprints), "b went back to v1 after serving v2"

    on_a = [c for c in calls if c.replica == "a"]
    failed = [c for c in on_a if c.status != 200]
    assert all(c.status is None for c in failed), failed  # transport errors only, never an HTTP error
    # each client loses one request: the one in flight at the kill, or its next one, refused
    assert 1 <= len(failed) <= CLIENTS, failed
    assert all(c.ended >= killed_at for c in failed), failed  # nothing failed before the kill
    assert all(c.status == 200 for c in on_a if c.ended < killed_at)
    assert b.proc.poll() is None
