"""kubetune_accuracy_estimated against labelled traffic: a real adapter trained by `kubetune train`
(the example's support-intents data, probe recipe: seconds of compute, with the temperature fitted on
rows held out of train), served under two names so that each gets its own window, fed labelled
tickets it never saw: ordinary ones (the shipped validation rows) and shifted ones (boundary, hard and
es/en tickets). On ordinary traffic the label-free estimate must match the measured accuracy; on
shifted traffic it must fall, and its known bias (a temperature fitted in-distribution stays too sure
off it; CBPE assumes the calibration still holds) is bounded and printed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import yaml
from kubetune_trainer.serve.config import AdapterSpec, ServeConfig
from test_serve_helpers import MINILM, running_server

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "examples" / "data"
ORDINARY = [DATA / "support-intents" / "validation.jsonl"]
SHIFTED = [
    DATA / "support-intents-boundary" / "test.jsonl",
    DATA / "support-intents-hard" / "test.jsonl",
    DATA / "support-intents-es-mixed" / "test.jsonl",
]
ORDINARY_TOLERANCE = 0.05
SHIFTED_OVERESTIMATE = 0.25  # measured: see the printed lines (issue 23 report)


def train_probe_adapter(out: Path) -> Path:
    doc = yaml.safe_load((ROOT / "examples" / "k8s" / "finetunejob-support-intents.yaml").read_text())
    doc["spec"]["training"]["recipe"] = "probe"
    doc["spec"]["evaluation"] = {"baseline": False}
    manifest = out / "probe.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    env = {**os.environ, "KUBETUNE_TERMINATION_LOG": str(out / "termination")}
    mounts = ["--pvc", f"kubetune-data={DATA}", "--pvc", f"kubetune-output={out}"]
    cmd = [
        sys.executable,
        "-m",
        "kubetune.cli",
        "train",
        "-f",
        str(manifest),
        *mounts,
        "--log-format",
        "json",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return out / "support-intents" / "adapter"


def test_estimated_accuracy_matches_ordinary_traffic_and_falls_on_shifted_traffic(tmp_path: Path) -> None:
    adapter = train_probe_adapter(tmp_path)
    meta = json.loads((adapter / "kubetune.json").read_text())
    report = json.loads((adapter.parent / "metrics.json").read_text())
    assert report["calibration"]["rows"] == 48  # 10% of the 480 training rows, never validation
    assert report["trainRows"] == 432
    assert abs(meta["temperature"] - report["calibration"]["temperature"]) < 1e-4
    assert meta["temperature"] != 1.0

    config = ServeConfig(
        base_model=MINILM,
        task="sequence-classification",
        max_input_tokens=64,
        adapters=[
            AdapterSpec(name="ordinary", version="v1", uri=str(adapter)),
            AdapterSpec(name="shifted", version="v1", uri=str(adapter)),
        ],
    )
    result = {}
    with running_server(config) as (url, _):
        for name, paths in (("ordinary", ORDINARY), ("shifted", SHIFTED)):
            rows = [
                json.loads(line) for path in paths for line in path.read_text().splitlines() if line.strip()
            ]
            answers = []
            for start in range(0, len(rows), 32):
                batch = [r["text"] for r in rows[start : start + 32]]
                response = httpx.post(f"{url}/v1/classify", json={"model": name, "input": batch}, timeout=120)
                assert response.status_code == 200, response.text
                answers += response.json()["data"]
            measured = sum(a["label"] == r["label"] for a, r in zip(answers, rows, strict=True)) / len(rows)
            confidence = sum(max(a["probabilities"].values()) for a in answers) / len(answers)
            result[name] = (len(rows), measured, confidence)
        metrics = httpx.get(f"{url}/metrics", timeout=30).text
    for name, (n, measured, confidence) in result.items():
        found = re.search(
            rf'kubetune_accuracy_estimated{{adapter="{name}",version="v1"}} ([0-9.e-]+)', metrics
        )
        assert found, metrics
        estimated = float(found.group(1))
        print(f"{name} traffic: {n} rows, measured {measured:.3f}, estimated {estimated:.3f}")
        assert abs(estimated - confidence) < 1e-6  # the mean calibrated max-probability of the window
        result[name] = (n, measured, estimated)
    (_, ordinary, ordinary_estimate), (_, shifted, shifted_estimate) = result["ordinary"], result["shifted"]
    assert shifted < 0.9, "the shifted traffic must hold mistakes, or the check proves nothing"
    assert abs(ordinary_estimate - ordinary) < ORDINARY_TOLERANCE
    assert shifted_estimate < ordinary_estimate - 0.03  # the estimate falls with the accuracy
    assert shifted_estimate - shifted < SHIFTED_OVERESTIMATE
