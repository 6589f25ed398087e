"""Engine mode: how sure the engine was of each answer, and what kubetune does with it.

An OpenAI-compatible engine returns token logprobs when asked (vLLM: chat `logprobs: true,
top_logprobs: N`; completions `logprobs: N`). Where the client did not ask, the kubetune container
asks for them itself, with the two likeliest tokens at each step (the margin the review queue needs:
the engine cannot be asked for them on some tokens only), reads the answer's confidence
(answer_confidence.py) and removes them again: the client gets `logprobs: null`, as the engine writes
it when none were asked for. A client that asked gets the engine's logprobs untouched.

The confidence feeds the confidence drift window (engine_drift.py), kubetune_accuracy_estimated and
kubetune_review_rate (estimated_accuracy.py: the mean confidence, uncalibrated here: an engine
applies no temperature of ours), and the review queue (review.py: an answer whose margin is under
monitoring.review.marginThreshold waits for a person, with the same caps, files and /admin/review
API as the local model's). Novelty needs the model's embeddings, which the engine does not return.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from kubetune_trainer.serve.answer_confidence import (
    AnswerConfidence,
    TokenLogprob,
    answer_confidence,
    chat_tokens,
    completion_tokens,
)
from kubetune_trainer.serve.engine_drift import EngineDrift
from kubetune_trainer.serve.estimated_accuracy import TrafficEstimates
from kubetune_trainer.serve.fresh import scrub_metadata
from kubetune_trainer.serve.review import ReviewItem, fresh_and_review, item_id
from kubetune_trainer.serve.selection import entropy
from kubetune_trainer.serve.state import ServerState

TOP_ALTERNATIVES = 2  # top-1 and top-2 give the margin; more costs the engine and the wire only
GUESS_CHARS = 200  # a free-text answer shown as the review item's guess


def ask_logprobs(body: dict[str, Any], chat: bool) -> tuple[dict[str, Any], bool]:
    """The body to send the engine, and whether kubetune added logprobs the client did not ask for.

    >>> ask_logprobs({"model": "m"}, chat=True)
    ({'model': 'm', 'logprobs': True, 'top_logprobs': 2}, True)
    >>> ask_logprobs({"model": "m", "logprobs": 0}, chat=False)
    ({'model': 'm', 'logprobs': 0}, False)
    """
    if chat:
        if body.get("logprobs"):
            return body, False
        return {**body, "logprobs": True, "top_logprobs": TOP_ALTERNATIVES}, True
    if body.get("logprobs") is not None:
        return body, False
    return {**body, "logprobs": TOP_ALTERNATIVES}, True


def choice_tokens(choice: dict[str, Any], chat: bool) -> list[TokenLogprob]:
    return chat_tokens(choice.get("logprobs")) if chat else completion_tokens(choice.get("logprobs"))


def strip_logprobs(choice: dict[str, Any]) -> None:
    """Back to the engine's answer without logprobs (the key stays, null, where the engine has it)."""
    if "logprobs" in choice:
        choice["logprobs"] = None


def prompt_texts(body: dict[str, Any], chat: bool) -> list[str]:
    """What a person reviews: the last user message of a chat, or each completion prompt."""
    if not chat:
        prompt = body.get("prompt")
        return [prompt] if isinstance(prompt, str) else [p for p in prompt or [] if isinstance(p, str)]
    users = [m for m in body.get("messages") or [] if isinstance(m, dict) and m.get("role") == "user"]
    content = users[-1].get("content") if users else None
    if isinstance(content, list):
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return [content] if isinstance(content, str) else []


@dataclass
class EngineMonitor:
    """Confidence of the engine's answers into drift, estimated accuracy and the review queue."""

    state: ServerState
    drift: EngineDrift
    estimates: TrafficEstimates

    @classmethod
    def build(cls, state: ServerState, drift: EngineDrift) -> EngineMonitor:
        """Estimates, fresh data and the review queue as the config asks, set on the server state
        (where /metrics, /v1/feedback and /admin/review find them)."""
        config, metrics = state.config, state.metrics
        estimates = TrafficEstimates(
            metrics.accuracy_estimated, metrics.review_rate, config.monitoring.window_size
        )
        metrics.before_render.append(estimates.refresh)
        drift.on_forget.append(estimates.forget)
        state.estimates = estimates
        for name, part in fresh_and_review(config, metrics).items():
            setattr(state, name, part)
        return cls(state, drift, estimates)

    def review_labels(self, alias: dict[str, str]) -> dict[str, list[str]]:
        """Each served name's review choices: its active version's reference labels."""
        return {
            name: self.drift.reference_labels(*model_id.split("@", 1)) for name, model_id in alias.items()
        }

    async def observe(
        self,
        labels: tuple[str, str],
        body: dict[str, Any],
        chat: bool,
        answers: list[tuple[str, list[TokenLogprob]]],
    ) -> None:
        """One request's answers (text and tokens, in choice order) of adapter version `labels`."""
        adapter, version = labels
        prompts = prompt_texts(body, chat)
        found = [(i, text, c) for i, (text, tokens) in enumerate(answers) if (c := answer_confidence(tokens))]
        if not found:
            return
        for _, _, c in found:
            self.drift.observe_confidence(adapter, version, c.mean_field)
        self.estimates.observe(adapter, version, [c.confidence for _, _, c in found])
        queue = self.state.review
        if queue is None:
            return
        flagged = [bool(queue.reasons(c.margin, None)) for _, _, c in found]
        self.estimates.observe_review(adapter, version, flagged)
        m = self.state.config.monitoring
        raw = body.get("metadata")
        metadata = scrub_metadata(
            raw if isinstance(raw, dict) else None, m.drop_fields, m.hash_fields, adapter
        )
        items = [
            review_item(prompts[min(i, len(prompts) - 1)], text, c, labels, metadata)
            for (i, text, c), queued in zip(found, flagged, strict=True)
            if queued and prompts
        ]
        if items:
            await asyncio.to_thread(queue.add, items)


def review_item(
    prompt: str, answer: str, c: AnswerConfidence, labels: tuple[str, str], metadata: dict[str, Any]
) -> ReviewItem:
    """The queue's item for an uncertain answer: the prompt to label, the answer as the guess."""
    p = min(max(c.confidence, 0.0), 1.0)
    return ReviewItem(
        id=item_id(prompt),
        text=prompt,
        adapter=labels[0],
        version=labels[1],
        guesses=[(c.label if c.label is not None else answer[:GUESS_CHARS], p)],
        margin=c.margin,
        novelty=None,
        reasons=["uncertain"],
        queued_at=time.time(),
        metadata=metadata,
        entropy=round(entropy([p, 1.0 - p]), 6),
    )
