"""Drift in front of an engine: the scores the kubetune container computes from what the engine
answers.

  length_psi       PSI of the prompt lengths the engine reports (usage.prompt_tokens: the
                   chat-templated prompt, as the trainer measured its validation prompts) over the
                   reference's bins
  label_psi        PSI of the predicted label, where answers are closed-set JSON objects with an
                   "intent" (the trainer's reference predictionDistribution of such answers)
  confidence_drop  reference mean confidence minus the window's, both read off the reference's
                   histogram bins (drift.Window's rule); the answer's confidence comes from the token
                   logprobs the engine returns (engine_monitor.py, answer_confidence.py)

Embedding scores (embedding_cosine, embedding_mmd) need the model's hidden states, which an
OpenAI-compatible engine does not return: not computed here.
The reference is the trainer's reference_stats.json beside the adapter (drift.find_reference).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

from prometheus_client import Gauge

from kubetune_trainer.closed_set import parse_json_object
from kubetune_trainer.serve.drift import (
    REFERENCE_FILE,
    Reference,
    Window,
    find_reference,
)

log = logging.getLogger("kubetune.serve")


def answer_label(answer: str) -> str | None:
    """The label a closed-set answer names (its JSON "intent"), None for free text.

    >>> answer_label('{"intent": "billing", "priority": "high"}'), answer_label("Ahoy!")
    ('billing', None)
    """
    parsed = parse_json_object(answer)
    label = parsed.get("intent") if parsed else None
    return str(label) if label is not None else None


class LengthLabelWindow(Window):
    """drift.Window (the same sliding counts and PSI as our own server's) over the last `size`
    requests of one version, fed what the engine reports: prompt lengths and closed-set labels."""

    def add_request(self, prompt_tokens: int, label: str | None) -> None:
        self.add(label, None, prompt_tokens, None)

    def scores(self) -> dict[str, float]:
        """length_psi, and label_psi once closed-set answers were seen (only then does the label
        distribution mean something); confidence is ConfidenceWindow's, embeddings are not seen."""
        every = super().scores()
        out = {"length_psi": every["length_psi"]}
        if self.label_counts.sum() > 0:
            out["label_psi"] = every["label_psi"]
        return out


class ConfidenceWindow(Window):
    """drift.Window over the last `size` answers' confidences of one version (answers, not requests:
    a request may have several, or none with logprobs, so this window slides apart from the other)."""

    def add_answer(self, confidence: float) -> None:
        self.add(None, confidence, None, None)


class EngineDrift:
    """Windows per adapter version, scored into the drift gauges when /metrics is scraped."""

    def __init__(self, score: Gauge, window_gauge: Gauge, size: int) -> None:
        self.score = score
        self.window_gauge = window_gauge
        self.size = size
        self._windows: dict[tuple[str, str], LengthLabelWindow] = {}
        self._confidence: dict[tuple[str, str], ConfidenceWindow] = {}
        self.on_forget: list[Callable[[str, str], None]] = []  # the estimates of an unloaded version go too

    def load_reference(self, adapter: str, version: str, adapter_dir: Path) -> bool:
        """Watch a version whose folder has the trainer's reference (False, logged, otherwise)."""
        path = find_reference(adapter_dir)
        if path is None:
            log.info("drift: no %s for %s@%s; not monitored", REFERENCE_FILE, adapter, version)
            return False
        reference = Reference.from_stats(json.loads(path.read_text()))
        self._windows[(adapter, version)] = LengthLabelWindow(reference, self.size)
        self._confidence[(adapter, version)] = ConfidenceWindow(reference, self.size)
        return True

    def forget(self, adapter: str, version: str) -> None:
        self._confidence.pop((adapter, version), None)
        for follower in self.on_forget:
            follower(adapter, version)
        if self._windows.pop((adapter, version), None) is None:
            return
        for kind in ("length_psi", "label_psi", "confidence_drop"):
            with contextlib.suppress(KeyError):  # a score never set has no series to remove
                self.score.remove(adapter, version, kind)
        with contextlib.suppress(KeyError):
            self.window_gauge.remove(adapter, version)

    def watching(self, adapter: str, version: str) -> bool:
        return (adapter, version) in self._windows

    def observe(self, adapter: str, version: str, prompt_tokens: int, answer: str) -> None:
        window = self._windows.get((adapter, version))
        if window is not None and prompt_tokens > 0:
            window.add_request(prompt_tokens, answer_label(answer))

    def observe_confidence(self, adapter: str, version: str, confidence: float) -> None:
        """One answer's confidence (read off the engine's token logprobs)."""
        window = self._confidence.get((adapter, version))
        if window is not None:
            window.add_answer(confidence)

    def reference_labels(self, adapter: str, version: str) -> list[str]:
        """The labels of a watched version's reference (the review page's choices)."""
        window = self._windows.get((adapter, version))
        return list(window.reference.labels) if window is not None else []

    def refresh(self) -> None:
        for (adapter, version), window in list(self._windows.items()):
            for kind, value in window.scores().items():
                self.score.labels(adapter, version, kind).set(value)
            self.window_gauge.labels(adapter, version).set(len(window.lengths))
        for (adapter, version), confidence in list(self._confidence.items()):
            if confidence.confidences:
                self.score.labels(adapter, version, "confidence_drop").set(confidence.confidence_drop())
