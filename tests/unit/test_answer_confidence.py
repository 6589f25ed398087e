"""The answer's confidence from the engine's token logprobs (answer_confidence.py), the requests and
answers the front rewrites for it (engine_monitor.py), and the confidence drift window."""

from __future__ import annotations

import math

import pytest
from kubetune_trainer.serve.answer_confidence import (
    TokenLogprob,
    answer_confidence,
    chat_tokens,
    chat_wire,
    completion_tokens,
    completion_wire,
)
from kubetune_trainer.serve.drift import Reference
from kubetune_trainer.serve.engine_drift import ConfidenceWindow
from kubetune_trainer.serve.engine_monitor import ask_logprobs, prompt_texts, strip_logprobs


def tokens(
    *pieces: tuple[str, float] | tuple[str, float, tuple[tuple[str, float], ...]],
) -> list[TokenLogprob]:
    return [TokenLogprob(*p) for p in pieces]


def test_a_closed_set_answer_is_as_sure_as_its_least_sure_field() -> None:
    # {"intent": "billing", "priority": "high"}, with a token that joins punctuation and a value.
    answer = tokens(
        ('{"intent": "', 0.0),
        ("bill", math.log(0.6), (("bill", math.log(0.6)), ("login", math.log(0.3)))),
        ("ing", math.log(0.9)),
        (
            '", "priority": "high',
            math.log(0.95),
            (('", "priority": "high', math.log(0.95)), ("y", math.log(0.04))),
        ),
        ('"}', 0.0),
        ("<|im_end|>", math.log(0.99)),  # what an engine may list after the answer
    )
    c = answer_confidence(answer)
    assert c is not None and c.label == "billing"
    assert c.confidence == pytest.approx(0.6 * 0.9)  # intent: both its tokens; priority: 0.95
    assert c.mean_field == pytest.approx((0.54 + 0.95) / 2)
    assert c.margin == pytest.approx(0.6 - 0.3)  # the least sure value token's top-1 minus top-2


def test_without_alternatives_the_margin_is_that_of_a_two_way_choice() -> None:
    c = answer_confidence(tokens(('{"n": ', 0.0), ("3", math.log(0.7)), ("}", 0.0)))
    assert c is not None and c.label == "3"
    assert c.confidence == pytest.approx(0.7) and c.margin == pytest.approx(0.4)


def test_free_text_is_the_mean_token_probability() -> None:
    c = answer_confidence(tokens(("The", math.log(0.5)), (" sea", math.log(0.9)), ("{", math.log(0.4))))
    assert c is not None and c.label is None
    assert c.confidence == pytest.approx(0.6) and c.margin == pytest.approx(0.2)
    assert answer_confidence([]) is None


def test_vllm_shapes_read_back_what_they_carry() -> None:
    answer = tokens(("a", -0.5, (("a", -0.5), ("b", -1.5))), (" é", -0.1, (("x", -0.1),)))
    chat = chat_wire(answer)
    assert chat["content"][1]["bytes"] == list(" é".encode())
    assert chat_tokens(chat) == answer
    completion = completion_wire(answer)
    assert completion["text_offset"] == [0, 1]
    assert completion_tokens(completion) == answer
    # echo: the first prompt token has no logprob (null), and is no part of the answer
    echoed = {"tokens": ["P", "a"], "token_logprobs": [None, -0.5], "top_logprobs": [None, {"a": -0.5}]}
    assert completion_tokens(echoed) == [TokenLogprob("a", -0.5, (("a", -0.5),))]
    assert chat_tokens(None) == [] and completion_tokens(None) == []


def test_the_front_asks_for_logprobs_only_where_the_client_did_not() -> None:
    assert ask_logprobs({"model": "m", "logprobs": False}, chat=True) == (
        {"model": "m", "logprobs": True, "top_logprobs": 2},
        True,
    )
    mine = {"model": "m", "logprobs": True, "top_logprobs": 5}
    assert ask_logprobs(mine, chat=True) == (mine, False)
    assert ask_logprobs({"model": "m"}, chat=False) == ({"model": "m", "logprobs": 2}, True)
    choice = {"index": 0, "logprobs": {"content": []}}
    strip_logprobs(choice)
    assert choice == {"index": 0, "logprobs": None}
    bare = {"index": 0}
    strip_logprobs(bare)
    assert bare == {"index": 0}  # an engine that writes no key gets none back


def test_the_review_text_is_the_last_user_message_or_the_prompt() -> None:
    messages = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "sec"}, {"type": "text", "text": "ond"}]},
    ]
    assert prompt_texts({"messages": messages}, chat=True) == ["second"]
    assert prompt_texts({"prompt": ["a", "b"]}, chat=False) == ["a", "b"]
    assert prompt_texts({"messages": [{"role": "system", "content": "s"}]}, chat=True) == []


def test_the_confidence_window_reads_off_the_reference_bins_and_slides() -> None:
    reference = Reference.from_stats(
        {
            "predictionDistribution": {"a": 1.0},
            "confidenceHistogram": {"edges": [0.0, 0.5, 1.0], "counts": [0, 4]},  # mean 0.75
            "inputLengthHistogram": {"edges": [0.0, 10.0], "counts": [1]},
        }
    )
    window = ConfidenceWindow(reference, size=2)
    window.add_answer(0.9)
    assert window.confidence_drop() == pytest.approx(0.0)
    window.add_answer(0.1)
    window.add_answer(0.2)  # 0.9 slid out: both in the low bin
    assert window.confidence_drop() == pytest.approx(0.5)
