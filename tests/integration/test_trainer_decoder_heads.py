"""training.recipe heads on the real SmolLM2-135M (GGUF, dequantized), tiny triage data: `kubetune
train` writes an adapter with one head per answer field, and the server answers /v1/chat/completions
and /v1/completions with exactly the JSON objects the evaluation scored (the served answers, scored
the same way, give the reported accuracy and the same predicted intents)."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import httpx
import openai
from kubetune_trainer.closed_set import AnswerSchema, field_accuracy
from kubetune_trainer.serve.config import AdapterSpec, ServeConfig
from test_serve_helpers import SMOLLM, running_server
from test_trainer_llm_baseline import train_manifest

ROOT = Path(__file__).resolve().parents[2]
TRIAGE = ROOT / "examples/data/support-triage"
VALIDATION_ROWS = 8


def train(tmp_path: Path) -> tuple[int, dict, list[dict]]:
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("".join((TRIAGE / "train.jsonl").read_text().splitlines(True)[:32]))
    val = (TRIAGE / "validation.jsonl").read_text().splitlines(True)[:VALIDATION_ROWS]
    (data / "validation.jsonl").write_text("".join(val))
    manifest = {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "heads"},
        "spec": {
            "baseModel": SMOLLM.wire(),
            "task": {"type": "causal-lm", "format": "messages"},
            "dataset": {
                "train": {"uri": "pvc://data/train.jsonl"},
                "validation": {"uri": "pvc://data/validation.jsonl"},
            },
            "lora": {"r": 4, "alpha": 8},
            "training": {"recipe": "heads", "maxSteps": 2, "batchSize": 8, "learningRate": 1e-3},
            "evaluation": {"maxSamples": VALIDATION_ROWS, "mustBeatBaseline": False},
            "output": {"uri": "pvc://out/heads"},
        },
    }
    return train_manifest(tmp_path, data, manifest)


def test_heads_adapter_serves_the_answers_it_was_scored_with(tmp_path: Path) -> None:
    code, result, log = train(tmp_path)
    assert code == 0, result
    adapter = tmp_path / "out" / "heads" / "adapter"
    meta = json.loads((adapter / "kubetune.json").read_text())
    assert (adapter / "heads.safetensors").is_file()
    # the default reading: the prompt's mean beside the state where the answer's first value begins
    assert meta["heads"]["pooling"] == "answer" and all(isinstance(t, int) for t in meta["heads"]["lead"])
    assert meta["heads"]["lead"]
    assert any(e["event"] == "head" and e["init"] == "linear-probe" for e in log)
    schema = AnswerSchema.from_wire(meta["heads"]["schema"])
    assert [f.name for f in schema.fields] == ["intent", "priority"]
    metrics = result["metrics"]
    assert metrics["after_json_validity"] == 1.0

    rows = [json.loads(line) for line in (tmp_path / "data" / "validation.jsonl").read_text().splitlines()]
    config = ServeConfig(
        base_model=SMOLLM,
        task="causal-lm",
        precision="fp32",
        max_input_tokens=512,
        max_new_tokens=32,
        adapters=[AdapterSpec(name="triage", version="v1", uri=str(adapter), digest=result["digest"])],
    )
    with running_server(config) as (url, _):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        chats = [
            client.chat.completions.create(model="triage", messages=r["messages"][:-1], temperature=0.7)
            .choices[0]
            .message.content
            or ""
            for r in rows
        ]
        # the same prompt as plain text: the same answer, whatever max_tokens says
        text = _rendered_prompt(rows[0]["messages"][:-1])
        completion = client.completions.create(model="triage", prompt=text, max_tokens=4).choices[0].text
        # the bare tickets, framed as the training rows were (kubetune.json "prompt"): the same answers
        tickets = [r["messages"][1]["content"] for r in rows]
        classified = httpx.post(f"{url}/v1/classify", json={"model": "triage", "input": tickets}, timeout=300)
    assert completion == chats[0]
    assert meta["prompt"] == {"format": "messages", "system": rows[0]["messages"][0]["content"]}
    assert [item["answer"] for item in classified.json()["data"]] == chats, classified.text
    answers = [schema.parse(c) for c in chats]
    assert all(a is not None and set(a) == {"intent", "priority"} for a in answers), chats
    served = field_accuracy(
        schema,
        [(a["intent"], a["priority"]) for a in answers],  # type: ignore[index]
        [r["messages"][-1]["content"] for r in rows],
    )
    assert served["intent_exact_match"] == metrics["after_intent_exact_match"]
    assert served["priority_exact_match"] == metrics["after_priority_exact_match"]
    stats = json.loads((tmp_path / "out" / "heads" / "reference_stats.json").read_text())
    intents = Counter(a["intent"] for a in answers)  # type: ignore[index]
    assert stats["predictionDistribution"] == {k: n / len(rows) for k, n in sorted(intents.items())}


def _rendered_prompt(messages: list[dict[str, str]]) -> str:
    from transformers import AutoTokenizer

    # the trainer's dequantized copy of the GGUF (made by the run above), whose tokenizer the server uses
    cache = Path(os.path.expanduser("~/.cache/kubetune/gguf"))
    folder = sorted(p for p in cache.glob("SmolLM2-135M-Instruct.Q4_1-*") if (p / "config.json").is_file())[0]
    return AutoTokenizer.from_pretrained(folder).apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
