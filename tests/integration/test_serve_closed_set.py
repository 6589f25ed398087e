"""An adapter with closed-set answers (kubetune.json "answerSchema") is served the way it was evaluated:
the real server's /v1/chat/completions and /v1/completions answers equal, token for token, what
the trainer's evaluation picks (closed_set.choose_answers on the same prompt), on real triage tickets."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from kubetune_trainer import models
from kubetune_trainer.closed_set import answer_end, choose_answers, infer_schema
from kubetune_trainer.data import ChatExample
from kubetune_trainer.evaluate import prompt_and_reference
from kubetune_trainer.serve.config import AdapterSpec, ServeConfig
from peft import PeftModel
from test_serve_helpers import SMOLLM, make_adapters, running_server

from kubetune.api.trainconfig import TrainConfig

TRIAGE = Path(__file__).resolve().parents[2] / "examples" / "data" / "support-triage"
ROWS = 4


def triage(name: str) -> list[list[dict[str, str]]]:
    return [json.loads(line)["messages"] for line in (TRIAGE / name).read_text().splitlines()]


def test_served_closed_set_answers_equal_the_evaluation_token_for_token(tmp_path: Path) -> None:
    folder = make_adapters(SMOLLM, "causal-lm", tmp_path, {"triage": 5})["triage"]
    config = TrainConfig.model_validate(
        {
            "name": "triage",
            "baseModel": SMOLLM.wire(),
            "task": {"type": "causal-lm"},
            "dataset": {"train": {"uri": "pvc://d/train.jsonl"}},
            "training": {"maxSteps": 1},
            "outputUri": "pvc://o/t",
        }
    )
    tokenizer, base = models.load_tokenizer_and_model(config, [])
    schema, why = infer_schema([m[-1]["content"] for m in triage("train.jsonl")], answer_end(tokenizer, True))
    assert schema is not None, why
    meta = json.loads((folder / "kubetune.json").read_text())
    (folder / "kubetune.json").write_text(json.dumps(meta | {"answerSchema": schema.wire()}))

    chats = triage("validation.jsonl")[:ROWS]
    prompts = [
        prompt_and_reference(ChatExample(tuple((m["role"], m["content"]) for m in c)), tokenizer)[0]
        for c in chats
    ]
    model = PeftModel.from_pretrained(base, str(folder))  # as the trainer holds it after training
    evaluated = choose_answers(
        model, tokenizer, [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts], schema
    )

    serve = ServeConfig(
        base_model=SMOLLM,
        task="causal-lm",
        adapters=[AdapterSpec(name="triage", version="v1", uri=str(folder))],
        max_input_tokens=512,
    )
    with running_server(serve) as (url, _):
        for chat, prompt, answer in zip(chats, prompts, evaluated, strict=True):
            ids = tokenizer(answer.text, add_special_tokens=False)["input_ids"]
            reply = httpx.post(
                f"{url}/v1/chat/completions",
                json={"model": "triage", "messages": chat[:-1], "temperature": 0.9, "max_tokens": 4},
                timeout=120,
            ).json()
            assert reply["choices"][0]["message"]["content"] == answer.text, reply
            assert reply["choices"][0]["finish_reason"] == "stop"
            assert reply["usage"]["completion_tokens"] == len(ids)
            text = httpx.post(
                f"{url}/v1/completions", json={"model": "triage", "prompt": prompt}, timeout=120
            ).json()["choices"][0]["text"]
            assert tokenizer(text, add_special_tokens=False)["input_ids"] == ids
            assert schema.parse(text) == dict(
                zip([f.name for f in schema.fields], answer.values, strict=True)
            )
