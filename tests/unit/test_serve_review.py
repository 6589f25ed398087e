"""Review queue: margin/novelty, labelling order (uncertainty vs diversity), the bounded deduplicated
queue files (items, bytes, text length), and the admin token from a browser's Basic credentials."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from kubetune_trainer.serve.admin import presented_token
from kubetune_trainer.serve.review import DONE_FILE, QUEUE_FILE, ReviewItem, ReviewQueue, item_id
from kubetune_trainer.serve.selection import kmeans, margin, novelty, order_for_labelling, top_two
from prometheus_client import CollectorRegistry, Counter, Gauge


def test_margin_and_top_two() -> None:
    assert margin([0.1, 0.6, 0.3]) == pytest.approx(0.3)
    assert margin([1.0]) == 1.0
    assert top_two([0.1, 0.6, 0.3], ["a", "b", "c"]) == [("b", 0.6), ("c", 0.3)]


def test_novelty_is_distance_to_nearest_reference_row() -> None:
    reference = np.array([[1.0, 0.0], [0.0, 1.0]])
    far = novelty(np.array([[2.0, 0.0], [1.0, 1.0], [-1.0, 0.0]]), reference)
    assert far[0] == pytest.approx(0.0)
    assert far[1] == pytest.approx(1 - np.sqrt(0.5))
    assert far[2] == pytest.approx(1.0)  # opposite of one row, orthogonal to the other
    assert novelty(np.ones((2, 2)), np.zeros((0, 0))).tolist() == [0.0, 0.0]


def three_topics(rng: np.random.Generator) -> tuple[list[float], np.ndarray]:
    """Topic 0 holds the six most uncertain inputs; topics 1 and 2 are less uncertain."""
    centres = np.eye(3) * 5
    embeddings = np.concatenate([centres[t] + rng.normal(0, 0.1, (6, 3)) for t in range(3)])
    margins = (
        [0.01 * i for i in range(6)] + [0.2 + 0.01 * i for i in range(6)] + [0.4 + 0.01 * i for i in range(6)]
    )
    return margins, embeddings


def test_kmeans_finds_separated_topics() -> None:
    _, embeddings = three_topics(np.random.default_rng(0))
    assign = kmeans(embeddings, 3, seed=0)
    assert {frozenset(np.flatnonzero(assign == c).tolist()) for c in range(3)} == {
        frozenset(range(6)),
        frozenset(range(6, 12)),
        frozenset(range(12, 18)),
    }


def test_uncertainty_spends_the_budget_on_one_topic_diversity_spreads_it() -> None:
    margins, embeddings = three_topics(np.random.default_rng(1))
    by_uncertainty = order_for_labelling(margins, embeddings, "uncertainty")
    assert by_uncertainty[:6] == [0, 1, 2, 3, 4, 5]
    diverse = order_for_labelling(margins, embeddings, "diverse", clusters=3)
    assert sorted(diverse) == list(range(18))
    assert {i // 6 for i in diverse[:3]} == {0, 1, 2}  # one per topic in the first round
    assert diverse[:3] == [0, 6, 12]  # each topic's most uncertain, most uncertain topic first


def item(text: str, margin_: float = 0.1, adapter: str = "intents") -> ReviewItem:
    return ReviewItem(
        id=item_id(text),
        text=text,
        adapter=adapter,
        version="v1",
        guesses=[("billing_refund", 0.5), ("fraud_report", 0.4)],
        margin=margin_,
        novelty=0.2,
        reasons=["uncertain"],
        queued_at=0.0,
        metadata={"tier": "gold"},
        embedding=[1.0, 0.0],
    )


def queue_at(folder: Path, max_items: int = 5) -> tuple[ReviewQueue, Gauge]:
    gauge = Gauge("kubetune_review_queue_length", "x", ("adapter",), registry=CollectorRegistry())
    return ReviewQueue(folder, gauge, 0.3, 0.5, max_items, clusters=2), gauge


def waiting(gauge: Gauge, adapter: str = "intents") -> float:
    return gauge.labels(adapter)._value.get()  # type: ignore[attr-defined]


def test_reasons_follow_the_thresholds(tmp_path: Path) -> None:
    queue, _ = queue_at(tmp_path)
    assert queue.reasons(0.29, 0.1) == ["uncertain"]
    assert queue.reasons(0.31, 0.6) == ["novel"]
    assert queue.reasons(0.1, 0.6) == ["uncertain", "novel"]
    assert queue.reasons(0.5, None) == []


def test_queue_deduplicates_bounds_and_resolves(tmp_path: Path) -> None:
    queue, gauge = queue_at(tmp_path, max_items=3)
    assert queue.add([item("a"), item("b"), item("a")]) == 2
    assert queue.add([item("b", 0.05)]) == 0  # same text: once per adapter
    assert waiting(gauge) == 2
    assert queue.add([item("c"), item("d"), item("e")]) == 3
    assert [i.text for i in queue.pending("intents", "uncertainty")] == ["c", "d", "e"]  # oldest dropped
    assert waiting(gauge) == 3

    done = queue.resolve("intents", item_id("d"), "fraud_report")
    assert done is not None and done.metadata == {"tier": "gold"}
    assert queue.resolve("intents", item_id("d"), "fraud_report") is None  # not waiting any more
    assert queue.resolve("intents", item_id("c"), None) is not None  # skipped
    assert [i.text for i in queue.pending("intents")] == ["e"]
    assert waiting(gauge) == 1
    assert queue.add([item("d")]) == 0  # a decided text does not come back
    decided = [json.loads(line) for line in (tmp_path / "intents" / DONE_FILE).read_text().splitlines()]
    assert [(r["id"], r["label"]) for r in decided] == [(item_id("d"), "fraud_report"), (item_id("c"), None)]


def test_queue_refuses_long_texts_and_keeps_its_file_under_the_byte_cap(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    gauge = Gauge("kubetune_review_queue_length", "x", ("adapter",), registry=registry)
    dropped = Counter("kubetune_review_dropped", "x", ("adapter", "reason"), registry=registry)
    queue = ReviewQueue(tmp_path, gauge, 0.3, 0.5, 100, 2, dropped, max_text_chars=50, max_bytes=4000)
    assert queue.add([item("x" * 51), item("short")]) == 1
    assert (
        registry.get_sample_value(
            "kubetune_review_dropped_total", {"adapter": "intents", "reason": "too_long"}
        )
        == 1
    )
    for i in range(40):  # ~500 bytes a line: the file would hold 20 KB without the cap
        queue.add([item(f"ticket {i} " + "y" * 30)])
    path = tmp_path / "intents" / QUEUE_FILE
    assert path.stat().st_size <= 4000
    texts = [i.text for i in queue.pending("intents", "uncertainty")]
    assert texts and texts[-1].startswith("ticket 39 "), "the newest items are the ones kept"
    full = registry.get_sample_value(
        "kubetune_review_dropped_total", {"adapter": "intents", "reason": "queue_full"}
    )
    assert full == 41 - len(texts)


def test_two_pods_on_one_volume_share_the_queue(tmp_path: Path) -> None:
    first, _ = queue_at(tmp_path)
    second, _ = queue_at(tmp_path)
    first.add([item("a")])
    assert [i.text for i in second.pending("intents")] == ["a"]
    assert second.add([item("a")]) == 0
    second.resolve("intents", item_id("a"), "billing_refund")
    assert first.pending("intents") == []
    lines = (tmp_path / "intents" / QUEUE_FILE).read_text().splitlines()
    assert all("embedding" in json.loads(line) for line in lines)


def test_pending_orders_by_margin_within_clusters(tmp_path: Path) -> None:
    queue, _ = queue_at(tmp_path, max_items=10)
    items = [item(f"t{i}", m) for i, m in enumerate([0.2, 0.05, 0.1])]
    queue.add(items)
    assert [i.text for i in queue.pending("intents", "uncertainty")] == ["t1", "t2", "t0"]
    assert [i.text for i in queue.pending("intents", "uncertainty", limit=1)] == ["t1"]


def test_admin_token_from_bearer_or_basic() -> None:
    assert presented_token("Bearer abc") == "abc"
    assert presented_token("Basic " + base64.b64encode(b"anyone:abc").decode()) == "abc"
    assert presented_token("Basic !!!") is None
    assert presented_token("Digest abc") is None
    assert presented_token("") is None
