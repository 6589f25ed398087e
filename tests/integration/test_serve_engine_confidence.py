"""kubetune in front of an engine reads each answer's confidence off the token logprobs the engine
returns (issue 24: "keeps everything that is ours ... the review queue, accuracy"): on CPU, the
engine is a real `kubetune serve` process (test_serve_engine_front's fixtures) answering in vLLM's
logprobs shapes.

The client's answer is the engine's own whether or not the front asked for logprobs behind it; the
confidence feeds confidence_drop, kubetune_accuracy_estimated, kubetune_review_rate and the review
queue, with the values the client's own logprobs give.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from test_serve_engine_front import (  # noqa: F401 (engine, folders: fixtures)
    AUTH,
    PROMPT,
    TOKENS,
    clear_engine,
    engine,
    folders,
    front_config,
    front_yaml,
)
from test_serve_helpers import ADMIN_TOKEN, metric, running_server

REFERENCE = {  # the trainer's reference_stats.json: confidences half under 0.5, half over
    "predictionDistribution": {"billing": 0.5, "login": 0.5},
    "confidenceHistogram": {"edges": [0.0, 0.5, 1.0], "counts": [1, 1]},
    "inputLengthHistogram": {"edges": [0.0, 10.0, 20.0, 1000.0], "counts": [10, 0, 0]},
}


def shape(value: Any) -> Any:
    """The JSON's structure: keys and nesting, with each leaf's type (values differ: ids, times)."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value]
    return type(value).__name__


def sse_events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line[len("data: ") :]) for line in text.splitlines() if line.startswith("data: {")]


def mean_probability(logprobs: list[float]) -> float:
    return sum(math.exp(v) for v in logprobs) / len(logprobs)


def test_confidence_from_engine_logprobs_feeds_drift_accuracy_and_review(
    engine: str,  # noqa: F811
    folders: dict[str, Path],  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clear_engine(engine)
    (folders["v1"] / "reference_stats.json").write_text(json.dumps(REFERENCE))
    doc = yaml.safe_load(front_yaml(engine, {"v1": folders["v1"]}))
    doc["monitoring"] = {
        "windowSize": 50,
        "freshDataUri": str(tmp_path / "fresh"),
        "review": {"enabled": True, "marginThreshold": 1.0},  # every answer short of certain is queued
    }
    (tmp_path / "front.yaml").write_text(yaml.safe_dump(doc))
    chat = {"messages": PROMPT, "max_tokens": TOKENS, "temperature": 0}
    monkeypatch.setenv("KUBETUNE_ADMIN_TOKEN", ADMIN_TOKEN)  # the review API is behind it
    config = front_config(tmp_path / "front.yaml")
    with running_server(config) as (url, _), httpx.Client(timeout=120) as http:

        def both(path: str, body: dict[str, Any]) -> list[httpx.Response]:
            """The same request through the front and straight to the engine."""
            return [
                http.post(f"{u}{path}", json={**body, "model": m})
                for u, m in ((url, "triage"), (engine, "triage@v1"))
            ]

        def front(path: str, body: dict[str, Any]) -> httpx.Response:
            return http.post(f"{url}{path}", json={**body, "model": "triage"})

        plain, engine_plain = (r.json() for r in both("/v1/chat/completions", chat))
        assert plain["choices"][0]["logprobs"] is None
        assert shape(plain) == shape(engine_plain)
        assert plain["choices"][0]["message"] == engine_plain["choices"][0]["message"]

        asked = {"logprobs": True, "top_logprobs": 3}
        mine, engine_mine = (r.json() for r in both("/v1/chat/completions", {**chat, **asked}))
        logprobs = mine["choices"][0]["logprobs"]
        assert logprobs == engine_mine["choices"][0]["logprobs"]  # the client's own, untouched
        content = logprobs["content"]
        assert "".join(t["token"] for t in content) == plain["choices"][0]["message"]["content"]
        assert all(len(t["top_logprobs"]) == 3 and t["bytes"] == list(t["token"].encode()) for t in content)

        events = [sse_events(r.text) for r in both("/v1/chat/completions", {**chat, "stream": True})]
        assert [shape(e["choices"]) for e in events[0]] == [shape(e["choices"]) for e in events[1]]
        assert all(c["logprobs"] is None for e in events[0] for c in e["choices"])
        streamed = sse_events(front("/v1/chat/completions", {**chat, "stream": True, **asked}).text)
        tokens = [t for e in streamed for c in e["choices"] for t in (c["logprobs"] or {}).get("content", [])]
        assert tokens == content  # a stream's chunks carry the same tokens

        prompt = {"prompt": "The sea is", "max_tokens": 3, "temperature": 0}
        completion, engine_completion = (r.json() for r in both("/v1/completions", prompt))
        assert completion["choices"][0]["logprobs"] is None
        assert shape(completion) == shape(engine_completion)
        scored = front("/v1/completions", {**prompt, "logprobs": 1}).json()["choices"][0]["logprobs"]
        assert scored["tokens"] and len(scored["top_logprobs"][0]) == 1

        # Free-text answers: confidence = mean token probability; four chats (the same greedy
        # tokens), two completions.
        p_chat = mean_probability([t["logprob"] for t in content])
        p_completion = mean_probability(scored["token_logprobs"])
        seen = [p_chat] * 4 + [p_completion] * 2
        labels = {"adapter": "triage", "version": "v1"}
        estimated = metric(url, "kubetune_accuracy_estimated", **labels)
        assert estimated == pytest.approx(sum(seen) / len(seen), abs=1e-4)
        centres = [0.25 if p < 0.5 else 0.75 for p in seen]  # the window's mean, read off the reference bins
        drop = metric(url, "kubetune_drift_score", kind="confidence_drop", **labels)
        assert drop == pytest.approx(0.5 - sum(centres) / len(centres), abs=1e-6)
        assert metric(url, "kubetune_review_rate", **labels) == 1.0

        queue = http.get(f"{url}/admin/review/queue", params={"model": "triage"}, headers=AUTH).json()
        assert queue["labels"] == ["billing", "login"] and queue["waiting"] == 2  # one per distinct prompt
        item = next(i for i in queue["data"] if i["text"] == PROMPT[0]["content"])
        assert item["model"] == "triage@v1" and item["reasons"] == ["uncertain"]
        assert item["margin"] == pytest.approx(2 * p_chat - 1, abs=1e-3)
        answer = plain["choices"][0]["message"]["content"]
        assert item["guesses"] == [{"label": answer, "probability": round(p_chat, 4)}]
        body = {"model": "triage", "id": item["id"], "label": "billing"}
        labelled = http.post(f"{url}/admin/review/label", json=body, headers=AUTH)
        assert labelled.status_code == 200, labelled.text
        assert (tmp_path / "fresh" / "triage" / labelled.json()["freshFile"]).is_file()
