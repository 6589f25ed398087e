"""How sure the engine was of an answer, read off the token logprobs it returns (vLLM's shapes,
vllm/entrypoints/openai/{chat_completion,completion}/protocol.py).

  chat         choice.logprobs = {"content": [{"token", "logprob", "bytes",
                                               "top_logprobs": [{"token", "logprob", "bytes"}]}]}
  completions  choice.logprobs = {"tokens": [...], "token_logprobs": [...],
                                  "top_logprobs": [{token: logprob} | None], "text_offset": [...]}

A closed-set JSON answer ({"intent": "billing", ...}) is as sure as its least sure field: a field's
probability is that of its generated value tokens, exp(sum of their logprobs), and the answer's
confidence the minimum over fields. Free text: the mean token probability, as the trainer measured
its validation answers (evaluate.generate), so live and reference confidences are comparable. The
margin (the review queue's "uncertain" signal) is top-1 minus top-2 probability at the least sure
value token (top_logprobs >= 2); without alternatives, or for free text, 2p - 1: the margin of a
two-way choice answered with probability p.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token, its logprob and the alternatives the engine listed (top first)."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class AnswerConfidence:
    confidence: float  # closed-set: min over fields; free text: mean token probability
    mean_field: float  # closed-set: mean over fields (the trainer's closed-set reference); else = confidence
    margin: float
    label: str | None  # the closed-set answer's first field value (its "intent"), None for free text


def chat_tokens(logprobs: dict[str, Any] | None) -> list[TokenLogprob]:
    """A chat choice's (or stream chunk's) logprobs -> tokens.

    >>> chat_tokens({"content": [{"token": "a", "logprob": -0.1, "top_logprobs": [{"token": "a",
    ...     "logprob": -0.1}, {"token": "b", "logprob": -2.5}]}]})[0].top
    (('a', -0.1), ('b', -2.5))
    """
    content = (logprobs or {}).get("content") or []
    return [
        TokenLogprob(
            str(c["token"]),
            float(c["logprob"]),
            tuple((str(t["token"]), float(t["logprob"])) for t in c.get("top_logprobs") or []),
        )
        for c in content
    ]


def completion_tokens(logprobs: dict[str, Any] | None) -> list[TokenLogprob]:
    """A completion choice's (or stream chunk's) logprobs -> tokens."""
    doc = logprobs or {}
    tokens, values = doc.get("tokens") or [], doc.get("token_logprobs") or []
    tops = doc.get("top_logprobs") or [None] * len(tokens)
    out = []
    for token, value, top in zip(tokens, values, tops, strict=False):
        if value is None:
            continue
        ranked = sorted((top or {}).items(), key=lambda kv: -kv[1])
        out.append(TokenLogprob(str(token), float(value), tuple((t, float(v)) for t, v in ranked)))
    return out


def chat_wire(tokens: Sequence[TokenLogprob]) -> dict[str, Any]:
    """Tokens -> a chat choice's `logprobs`, as vLLM writes it."""

    def entry(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    return {
        "content": [
            {**entry(t.token, t.logprob), "top_logprobs": [entry(token, v) for token, v in t.top]}
            for t in tokens
        ]
    }


def completion_wire(tokens: Sequence[TokenLogprob], offset: int = 0) -> dict[str, Any]:
    """Tokens -> a completion choice's `logprobs`, as vLLM writes it (`offset`: characters of the
    answer before these tokens, for a stream's later chunks).

    >>> completion_wire([TokenLogprob("a", -0.5, (("a", -0.5),)), TokenLogprob("bc", 0.0)], 3)["text_offset"]
    [3, 4]
    """
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t.token)
    return {
        "text_offset": offsets,
        "token_logprobs": [t.logprob for t in tokens],
        "tokens": [t.token for t in tokens],
        "top_logprobs": [dict(t.top) for t in tokens],
    }


def token_margin(t: TokenLogprob) -> float:
    """Top-1 minus top-2 probability at one token (2p - 1 when no alternative is listed)."""
    p = math.exp(t.logprob)
    others = [math.exp(v) for token, v in t.top if token != t.token]
    return p - max(others) if others else 2 * p - 1


def leading_object(text: str) -> dict[str, Any] | None:
    """The JSON object an answer starts with; what follows it (an end-of-turn token the engine
    listed, a newline) is not part of the answer.

    >>> leading_object(' {"intent": "login"}<|im_end|>'), leading_object("no")
    ({'intent': 'login'}, None)
    """
    stripped = text.lstrip()
    if not stripped.startswith("{"):
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(stripped)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def value_spans(text: str, fields: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """Character span of each top-level field's value in a JSON object's text (a string's inside,
    without its quotes).

    >>> value_spans('{"intent": "billing", "n": 2}', {"intent": "billing", "n": 2})
    {'intent': (12, 19), 'n': (27, 28)}
    """
    decoder = json.JSONDecoder()
    spans: dict[str, tuple[int, int]] = {}
    for key in fields:
        match = re.search(re.escape(json.dumps(key)) + r"\s*:\s*", text)
        if match is None:
            continue
        start = match.end()
        try:
            _, end = decoder.raw_decode(text, start)
        except ValueError:
            continue
        quoted = text[start] == '"'
        spans[key] = (start + 1, end - 1) if quoted else (start, end)
    return spans


def answer_confidence(tokens: Sequence[TokenLogprob]) -> AnswerConfidence | None:
    """The answer's confidence, margin and label from its tokens (None when there are none).

    >>> closed = [TokenLogprob('{"intent": "', 0.0), TokenLogprob("bill", -0.2, (("bill", -0.2),
    ...     ("log", -1.8))), TokenLogprob("ing", -0.01), TokenLogprob('"}', 0.0)]
    >>> c = answer_confidence(closed)
    >>> round(c.confidence, 3), round(c.margin, 3), c.label
    (0.811, 0.653, 'billing')
    >>> round(answer_confidence([TokenLogprob("Hi", -0.5), TokenLogprob("!", 0.0)]).confidence, 3)
    0.803
    """
    if not tokens:
        return None
    text = "".join(t.token for t in tokens)
    parsed = leading_object(text)
    spans = value_spans(text, parsed) if parsed else {}
    if spans:
        return _closed(tokens, parsed or {}, spans)
    mean = sum(math.exp(t.logprob) for t in tokens) / len(tokens)
    return AnswerConfidence(mean, mean, 2 * mean - 1, None)


def _closed(
    tokens: Sequence[TokenLogprob], parsed: dict[str, Any], spans: dict[str, tuple[int, int]]
) -> AnswerConfidence:
    """Per field: the tokens overlapping its value's span."""
    offsets, at = [], 0
    for t in tokens:
        offsets.append((at, at + len(t.token)))
        at += len(t.token)
    probabilities, margins = [], []
    for start, end in spans.values():
        stop = max(end, start + 1)  # an empty string value: the token holding its closing quote
        inside = [t for t, (a, b) in zip(tokens, offsets, strict=True) if a < stop and b > start]
        if not inside:
            continue
        probabilities.append(math.exp(sum(t.logprob for t in inside)))
        margins.append(min(token_margin(t) for t in inside))
    first = next(iter(parsed.values()), None)
    label = None if first is None or isinstance(first, dict | list) else str(first)
    if not probabilities:  # no token carries a value: judge it as text
        mean = sum(math.exp(t.logprob) for t in tokens) / len(tokens)
        return AnswerConfidence(mean, mean, 2 * mean - 1, label)
    return AnswerConfidence(min(probabilities), sum(probabilities) / len(probabilities), min(margins), label)
