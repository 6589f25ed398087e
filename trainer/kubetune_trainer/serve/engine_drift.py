"""Drift in front of an engine: the scores the kubetune container can compute without the model.

  length_psi  PSI of the prompt lengths the engine reports (usage.prompt_tokens: the chat-templated
              prompt, as the trainer measured its validation prompts) over the reference's bins
  label_psi   PSI of the predicted label, where answers are closed-set JSON objects with an
              "intent" (the trainer's reference predictionDistribution of such answers)

Confidence and embedding scores need the model's probabilities and hidden states: not computed here.
The reference is the trainer's reference_stats.json beside the adapter (drift.find_reference).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from prometheus_client import Gauge

from kubetune_trainer.closed_set import parse_json_object
from kubetune_trainer.serve.drift import REFERENCE_FILE, Reference, bin_index, find_reference, psi

log = logging.getLogger("kubetune.serve")


def answer_label(answer: str) -> str | None:
    """The label a closed-set answer names (its JSON "intent"), None for free text.

    >>> answer_label('{"intent": "billing", "priority": "high"}'), answer_label("Ahoy!")
    ('billing', None)
    """
    parsed = parse_json_object(answer)
    label = parsed.get("intent") if parsed else None
    return str(label) if label is not None else None


@dataclass
class LengthLabelWindow:
    """The last `size` requests of one version: length bins and label indexes, with running counts."""

    reference: Reference
    size: int
    lengths: deque[int] = field(default_factory=deque)
    labels: deque[int] = field(default_factory=deque)
    length_counts: np.ndarray = field(init=False)
    label_counts: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.length_counts = np.zeros(len(self.reference.length_edges) - 1)
        self.label_counts = np.zeros(len(self.reference.labels))

    def add(self, prompt_tokens: int, label: str | None) -> None:
        if len(self.lengths) == self.size:
            self.length_counts[self.lengths.popleft()] -= 1
            gone = self.labels.popleft()
            if gone >= 0:
                self.label_counts[gone] -= 1
        self.lengths.append(bin_index(prompt_tokens, self.reference.length_edges))
        self.length_counts[self.lengths[-1]] += 1
        index = self.reference.labels.index(label) if label in self.reference.labels else -1
        self.labels.append(index)
        if index >= 0:
            self.label_counts[index] += 1

    def scores(self) -> dict[str, float]:
        ref = self.reference
        out = {"length_psi": psi(ref.length_counts.tolist(), self.length_counts.tolist())}
        if self.label_counts.sum() > 0:  # closed-set answers seen: the label distribution means something
            out["label_psi"] = psi(ref.label_shares.tolist(), self.label_counts.tolist())
        return out


class EngineDrift:
    """Windows per adapter version, scored into the drift gauges when /metrics is scraped."""

    def __init__(self, score: Gauge, window_gauge: Gauge, size: int) -> None:
        self.score = score
        self.window_gauge = window_gauge
        self.size = size
        self._windows: dict[tuple[str, str], LengthLabelWindow] = {}

    def load_reference(self, adapter: str, version: str, adapter_dir: Path) -> bool:
        """Watch a version whose folder has the trainer's reference (False, logged, otherwise)."""
        path = find_reference(adapter_dir)
        if path is None:
            log.info("drift: no %s for %s@%s; not monitored", REFERENCE_FILE, adapter, version)
            return False
        reference = Reference.from_stats(json.loads(path.read_text()))
        self._windows[(adapter, version)] = LengthLabelWindow(reference, self.size)
        return True

    def forget(self, adapter: str, version: str) -> None:
        if self._windows.pop((adapter, version), None) is None:
            return
        for kind in ("length_psi", "label_psi"):
            with contextlib.suppress(KeyError):  # a score never set has no series to remove
                self.score.remove(adapter, version, kind)
        with contextlib.suppress(KeyError):
            self.window_gauge.remove(adapter, version)

    def watching(self, adapter: str, version: str) -> bool:
        return (adapter, version) in self._windows

    def observe(self, adapter: str, version: str, prompt_tokens: int, answer: str) -> None:
        window = self._windows.get((adapter, version))
        if window is not None and prompt_tokens > 0:
            window.add(prompt_tokens, answer_label(answer))

    def refresh(self) -> None:
        for (adapter, version), window in list(self._windows.items()):
            for kind, value in window.scores().items():
                self.score.labels(adapter, version, kind).set(value)
            self.window_gauge.labels(adapter, version).set(len(window.lengths))
