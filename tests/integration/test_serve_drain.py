"""SIGTERM on a real `python -m kubetune_trainer.serve` process: the in-flight request finishes,
new connections are refused, the process exits 0."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
import yaml
from test_serve_helpers import SMOLLM, free_port, is_ready, wait_for

TOKENS = 24


@pytest.mark.slow
def test_sigterm_drains_in_flight_request(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "serve-config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "baseModel": SMOLLM.wire(),
                "task": "causal-lm",
                "host": "127.0.0.1",
                "port": port,
                "maxNewTokens": TOKENS,
                "drainTimeoutS": 120,
            }
        )
    )
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "kubetune_trainer.serve", "-f", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(lambda: is_ready(url) or proc.poll() is not None, 300, "/readyz")
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        result: dict[str, httpx.Response] = {}

        def slow_request() -> None:
            result["response"] = httpx.post(
                f"{url}/v1/completions",
                timeout=300,
                json={
                    "model": "base",
                    "prompt": "Once upon a time",
                    "max_tokens": TOKENS,
                    "stop": [],
                    "temperature": 0,
                },
            )

        thread = threading.Thread(target=slow_request)
        thread.start()
        in_flight = 'kubetune_requests_in_flight{adapter="base",version=""} 1.0'
        wait_for(lambda: in_flight in httpx.get(f"{url}/metrics").text, 60, "the request to be in flight")
        proc.send_signal(signal.SIGTERM)
        thread.join(300)
        response = result["response"]
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["completion_tokens"] > 0
        assert proc.wait(120) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/healthz", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
