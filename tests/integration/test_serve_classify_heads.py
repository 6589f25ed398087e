"""/v1/classify for a causal-lm adapter of training.recipe heads, on the real SmolLM2-135M (GGUF,
dequantized): each ticket, framed as the training rows were (kubetune.json "prompt"), gets per field
the label the chat endpoint answers for the same conversation, token for token the same prompt, and
the heads' probabilities for that prompt. The adapter is a real peft LoRA with heads fitted as the
trainer starts them (probes on the pooled embeddings of a few triage tickets)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from kubetune_trainer import decoder_heads as dh
from kubetune_trainer import models
from kubetune_trainer.artifacts import adapter_digest
from kubetune_trainer.closed_set import AnswerField, AnswerSchema
from kubetune_trainer.data import ChatExample
from kubetune_trainer.prompt_frame import framed_prompt, prompt_frame
from kubetune_trainer.serve.adapters import ModelSource
from kubetune_trainer.serve.config import AdapterSpec, ServeConfig
from kubetune_trainer.serve.limits import char_limit
from test_serve_helpers import SMOLLM, error_of, make_adapters, running_server

from kubetune.api.finetunejob import TaskSpec

TRIAGE = Path(__file__).resolve().parents[2] / "examples/data/support-triage"
FIT_ROWS, TICKETS, MAX_INPUT_TOKENS = 24, 6, 512


def conversations(name: str, count: int) -> list[ChatExample]:
    lines = (TRIAGE / name).read_text().splitlines()[:count]
    return [
        ChatExample(tuple((m["role"], m["content"]) for m in json.loads(line)["messages"])) for line in lines
    ]


def heads_adapter(out: Path) -> tuple[Path, Path]:
    """(adapter with a prompt frame, the same adapter without one, as an older trainer wrote it)."""
    folder = make_adapters(SMOLLM, "causal-lm", out, {"triage": 3})["triage"]
    fit = conversations("train.jsonl", FIT_ROWS)
    answers = [json.loads(e.messages[-1][1]) for e in fit]
    schema = AnswerSchema(
        "json", tuple(AnswerField(f, tuple(sorted({a[f] for a in answers}))) for f in ("intent", "priority"))
    )
    config = ServeConfig(base_model=SMOLLM, task="causal-lm")
    source = ModelSource(SMOLLM, TaskSpec(type="causal-lm"), config.cache_dir, config)
    tokenizer, base = models.load_tokenizer_and_model(source, [])  # type: ignore[arg-type]
    from peft import PeftModel

    model = dh.FieldHeads(PeftModel.from_pretrained(base, str(folder)), schema, "mean")
    frame = prompt_frame(fit)
    assert frame == {"format": "messages", "system": fit[0].messages[0][1]}
    ids = dh.token_ids(tokenizer, [framed_prompt(frame, e.messages[1][1], tokenizer) for e in fit])
    dh.init_from_probes(
        model,
        dh.embeddings(model, ids, tokenizer.pad_token_id),
        dh.field_targets(schema, [e.messages[-1][1] for e in fit]),
    )
    meta = {
        "task": "causal-lm",
        "labels": [],
        "answerSchema": schema.wire(),
        "heads": dh.save_heads(model, folder),
    }
    old = out / "no-frame"
    shutil.copytree(folder, old)
    (old / "kubetune.json").write_text(json.dumps(meta))
    (folder / "kubetune.json").write_text(json.dumps(meta | {"prompt": frame}))
    return folder, old


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder, old = heads_adapter(tmp_path_factory.mktemp("heads"))
    config = ServeConfig(
        base_model=SMOLLM,
        task="causal-lm",
        precision="fp32",
        max_input_tokens=MAX_INPUT_TOKENS,
        adapters=[
            AdapterSpec(name="triage", version="v1", uri=str(folder), digest=adapter_digest(folder)),
            AdapterSpec(name="older", version="v1", uri=str(old), digest=adapter_digest(old)),
        ],
    )
    with running_server(config) as (url, _):
        yield url


def test_classify_answers_each_field_as_the_chat_endpoint_does(server: str) -> None:
    tickets = conversations("validation.jsonl", TICKETS)
    chats = [
        httpx.post(
            f"{server}/v1/chat/completions",
            json={"model": "triage", "messages": [{"role": r, "content": c} for r, c in t.messages[:-1]]},
            timeout=120,
        ).json()
        for t in tickets
    ]
    reply = httpx.post(
        f"{server}/v1/classify",
        json={"model": "triage", "input": [t.messages[1][1] for t in tickets]},
        timeout=120,
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["object"] == "classification" and body["system_fingerprint"] == "triage@v1"
    # the same prompt, token for token: the prompt token counts add up exactly
    assert body["usage"]["prompt_tokens"] == sum(c["usage"]["prompt_tokens"] for c in chats)
    for item, chat in zip(body["data"], chats, strict=True):
        content = chat["choices"][0]["message"]["content"]
        assert item["answer"] == item["label"] == content
        assert {name: f["label"] for name, f in item["fields"].items()} == json.loads(content)
        for f in item["fields"].values():
            probs = f["probabilities"]
            assert abs(sum(probs.values()) - 1) < 1e-5 and max(probs, key=probs.get) == f["label"]
        assert "probabilities" not in item and item["truncated"] is False
    labels = {json.loads(c["choices"][0]["message"]["content"])["intent"] for c in chats}
    assert len(labels) > 1, "the fitted heads tell the tickets apart (not one constant answer)"


def test_each_input_is_refused_on_its_own_and_unframed_adapters_are_refused(server: str) -> None:
    ticket = conversations("validation.jsonl", 1)[0].messages[1][1]
    reply = httpx.post(
        f"{server}/v1/classify",
        json={"model": "triage@v1", "input": [ticket, "  ", "x" * (char_limit(MAX_INPUT_TOKENS) + 1)]},
        timeout=120,
    )
    assert reply.status_code == 200, reply.text
    data = reply.json()["data"]
    assert data[0]["fields"]["intent"]["label"]
    assert data[1]["error"]["param"] == "input[1]" and data[2]["error"]["code"] == "context_length_exceeded"
    older = httpx.post(f"{server}/v1/classify", json={"model": "older", "input": ticket}, timeout=60)
    assert older.status_code == 400 and error_of(older)["code"] == "wrong_task"
    assert "records no prompt frame" in error_of(older)["message"]
