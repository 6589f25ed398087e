"""The review queue's default order: largest entropy of the calibrated probabilities first (the rule
that caught the most mistakes per label in benchmarks/ACTIVE_LEARNING_RESULTS.md); items queued before
entropy was kept fall back to margin order."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from kubetune_trainer.serve.selection import entropy
from test_serve_review import item, queue_at


def test_default_order_is_largest_entropy_first(tmp_path: Path) -> None:
    queue, _ = queue_at(tmp_path, max_items=10)
    # t0 hesitates between two labels (small margin, low entropy), t1 among many (larger margin).
    probs = {"t0": [0.5, 0.45, 0.05, 0.0], "t1": [0.35, 0.2, 0.2, 0.25], "t2": [0.9, 0.05, 0.05, 0.0]}
    items = [
        dataclasses.replace(item(t, m), entropy=entropy(probs[t]))
        for t, m in (("t0", 0.05), ("t1", 0.1), ("t2", 0.85))
    ]
    queue.add(items)
    assert [i.text for i in queue.pending("intents")] == ["t1", "t0", "t2"]
    assert [i.text for i in queue.pending("intents", "uncertainty")] == ["t0", "t1", "t2"]


def test_items_without_entropy_are_ordered_by_margin(tmp_path: Path) -> None:
    queue, _ = queue_at(tmp_path, max_items=10)
    queue.add([item("old", 0.2), dataclasses.replace(item("new", 0.3), entropy=1.2)])
    assert [i.text for i in queue.pending("intents")] == ["old", "new"]


def test_entropy_of_sure_and_uniform_answers() -> None:
    assert entropy([1.0, 0.0]) == pytest.approx(0.0, abs=1e-9)
    assert entropy([0.25] * 4) == pytest.approx(1.3863, abs=1e-4)
