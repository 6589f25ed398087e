"""The review queue: served inputs a person should label, kept beside the fresh data.

An input joins when its margin (top-1 minus top-2 probability) is below `marginThreshold` or its
novelty (cosine distance to the nearest reference embedding) is above `noveltyThreshold`.
Layout, next to fresh.py's train/holdout files: <dir>/<adapter>/review.jsonl (queued items, one JSON
object a line: text, metadata scrubbed like fresh data, top-2 guesses, margin, novelty, embedding)
and <dir>/<adapter>/review-done.jsonl (ids labelled or skipped). An item id is the sha256 of the
text, so the same text is queued once per adapter (across versions and, through the files, pods).
Bounded: past `maxItems` waiting items, or past MAX_QUEUE_BYTES of queue file, the oldest are dropped
when the file is compacted, and a text longer than MAX_TEXT_CHARS is not queued (a person cannot label
it at a glance, and the labelling page must stay small); both are counted in
kubetune_review_dropped_total. A label
goes to the fresh dataset (FreshDataWriter), where the retraining loop reads it with
retraining.freshDataWeight.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import Counter, Gauge

from kubetune_trainer.serve.config import ServeConfig
from kubetune_trainer.serve.fresh import FreshDataWriter, InputMemory
from kubetune_trainer.serve.metrics import ServeMetrics
from kubetune_trainer.serve.selection import Rule, order_for_labelling

QUEUE_FILE = "review.jsonl"
DONE_FILE = "review-done.jsonl"
COMPACT_SLACK = 0.1
DONE_MEMORY = 10  # review-done.jsonl keeps the newest DONE_MEMORY x maxItems decisions (dedup memory)
MAX_TEXT_CHARS = 2000  # 100 items (one page load) stay under 1 MB even in 4-byte characters
MAX_QUEUE_BYTES = 8 << 20  # per adapter: the queue file, read whole on every page load


def item_id(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ReviewItem:
    id: str
    text: str
    adapter: str
    version: str
    guesses: list[tuple[str, float]]  # top-2 (label, probability), most likely first
    margin: float
    novelty: float | None
    reasons: list[str]  # "uncertain" and/or "novel"
    queued_at: float
    metadata: dict[str, Any] = field(default_factory=dict)
    embedding: list[float] | None = None
    entropy: float | None = None  # of the calibrated probabilities (None: queued before it was kept)

    def public(self) -> dict[str, Any]:
        """What the review page and `kubectl kubetune review` show (no embedding)."""
        return {
            "id": self.id,
            "text": self.text,
            "model": f"{self.adapter}@{self.version}",
            "guesses": [{"label": label, "probability": round(p, 4)} for label, p in self.guesses],
            "margin": round(self.margin, 4),
            "novelty": None if self.novelty is None else round(self.novelty, 4),
            "reasons": self.reasons,
            "queuedAt": self.queued_at,
        }


class ReviewQueue:
    """Per-adapter queue files under `directory`; safe for threads here and pods on the same volume."""

    def __init__(
        self,
        directory: Path,
        gauge: Gauge,
        margin_threshold: float,
        novelty_threshold: float,
        max_items: int,
        clusters: int,
        dropped: Counter | None = None,
        max_text_chars: int = MAX_TEXT_CHARS,
        max_bytes: int = MAX_QUEUE_BYTES,
    ) -> None:
        self.directory = directory
        self.gauge = gauge
        self.dropped = dropped  # {adapter, reason}
        self.max_text_chars = max_text_chars
        self.max_bytes = max_bytes
        self.margin_threshold = margin_threshold
        self.novelty_threshold = novelty_threshold
        self.max_items = max_items
        self.clusters = clusters
        self._lock = threading.Lock()
        self._seen: dict[str, set[str]] = {}  # adapter -> ids queued or done, as of our last read

    def reasons(self, margin: float, novelty: float | None) -> list[str]:
        """Why an input should be reviewed (empty: it should not)."""
        out = ["uncertain"] if margin < self.margin_threshold else []
        if novelty is not None and novelty > self.novelty_threshold:
            out.append("novel")
        return out

    @contextmanager
    def _locked(self, adapter: str) -> Iterator[Path]:
        folder = self.directory / adapter
        with self._lock:
            folder.mkdir(parents=True, exist_ok=True)
            with (folder / ".lock").open("a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    yield folder
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)

    def add(self, items: list[ReviewItem]) -> int:
        """Queue new items (all of one adapter); known texts are skipped. Returns how many joined."""
        if not items:
            return 0
        adapter = items[0].adapter
        short = [i for i in items if len(i.text) <= self.max_text_chars]
        self._drop(adapter, "too_long", len(items) - len(short))
        items = short
        with self._locked(adapter) as folder:
            seen = self._seen.get(adapter)
            if seen is None:
                queued, done = _read_queue(folder), _read_done(folder)
                seen = self._seen[adapter] = {i.id for i in queued} | set(done)
            fresh = []
            with (folder / QUEUE_FILE).open("a", encoding="utf-8") as f:
                for item in items:
                    if item.id not in seen:  # also a text sent twice in one request
                        f.write(json.dumps(asdict(item), ensure_ascii=False) + "\n")
                        seen.add(item.id)
                        fresh.append(item)
            waiting = self._compact(folder)
        self.gauge.labels(adapter).set(waiting)
        return len(fresh)

    def _compact(self, folder: Path) -> int:
        """Drop done items and, past max_items waiting, the oldest; returns the number waiting."""
        done_path = folder / DONE_FILE
        if done_path.is_file() and done_path.read_bytes().count(b"\n") > 2 * DONE_MEMORY * self.max_items:
            newest = done_path.read_bytes().splitlines(keepends=True)[-DONE_MEMORY * self.max_items :]
            tmp = folder / f".{DONE_FILE}.{os.getpid()}.tmp"
            tmp.write_bytes(b"".join(newest))
            os.replace(tmp, done_path)
        done = _read_done(folder)
        queued = [i for i in _read_queue(folder) if i.id not in done]
        raw = (folder / QUEUE_FILE).read_bytes() if (folder / QUEUE_FILE).is_file() else b""
        lines = raw.count(b"\n")
        if (
            lines > self.max_items * (1 + COMPACT_SLACK)
            or lines > 2 * max(1, len(queued))
            or len(raw) > self.max_bytes
        ):
            rows = [json.dumps(asdict(i), ensure_ascii=False) + "\n" for i in queued[-self.max_items :]]
            sizes = [len(row.encode()) for row in rows]
            first, total = 0, sum(sizes)
            while total > self.max_bytes:  # the newest items are kept, within the byte cap
                total -= sizes[first]
                first += 1
            self._drop(folder.name, "queue_full", len(queued) - (len(rows) - first))
            tmp = folder / f".{QUEUE_FILE}.{os.getpid()}.tmp"
            tmp.write_text("".join(rows[first:]), encoding="utf-8")
            os.replace(tmp, folder / QUEUE_FILE)
            return len(rows) - first
        return min(len(queued), self.max_items)

    def _drop(self, adapter: str, reason: str, count: int) -> None:
        if count > 0 and self.dropped is not None:
            self.dropped.labels(adapter, reason).inc(count)

    def pending(self, adapter: str, rule: Rule = "entropy", limit: int | None = None) -> list[ReviewItem]:
        """Waiting items in the order to label them (see selection.order_for_labelling)."""
        with self._locked(adapter) as folder:
            done = _read_done(folder)
            queued = _read_queue(folder)
            self._seen[adapter] = {i.id for i in queued} | set(done)
        latest = {i.id: i for i in queued if i.id not in done}
        items = list(latest.values())[-self.max_items :]
        self.gauge.labels(adapter).set(len(items))
        embedded = all(i.embedding for i in items) and len({len(i.embedding or []) for i in items}) == 1
        embeddings = np.asarray([i.embedding for i in items]) if items and embedded else None
        entropies = [i.entropy for i in items]
        known = None if None in entropies else [float(e) for e in entropies if e is not None]
        order = order_for_labelling(
            [i.margin for i in items], embeddings, rule, self.clusters, entropies=known
        )
        return [items[i] for i in order][:limit]

    def resolve(self, adapter: str, id_: str, label: str | None) -> ReviewItem | None:
        """Mark an item labelled (or skipped, label None); returns it, or None when not waiting."""
        with self._locked(adapter) as folder:
            done = _read_done(folder)
            item = next((i for i in _read_queue(folder) if i.id == id_ and i.id not in done), None)
            if item is None:
                return None
            record = {"id": id_, "label": label, "at": time.time()}
            with (folder / DONE_FILE).open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            self._seen.setdefault(adapter, set()).add(id_)
            waiting = self._compact(folder)
        self.gauge.labels(adapter).set(waiting)
        return item


def fresh_and_review(config: ServeConfig, metrics: ServeMetrics) -> dict[str, Any]:
    """ServerState's fresh-data writer and input memory (monitoring.freshDataUri) and review queue
    (with review.enabled), for the local model and in front of an engine alike."""
    monitoring = config.monitoring
    if not monitoring.fresh_data_uri:
        return {}
    fresh = FreshDataWriter(Path(config.locate(monitoring.fresh_data_uri)), monitoring.fresh_max_rows)
    parts: dict[str, Any] = {"fresh": fresh, "inputs": InputMemory()}
    review = monitoring.review
    if review.enabled:
        parts["review"] = ReviewQueue(
            fresh.directory,
            metrics.review_queue,
            review.margin_threshold,
            review.novelty_threshold,
            review.max_items,
            review.clusters,
            metrics.review_dropped,
        )
    return parts


def _read_queue(folder: Path) -> list[ReviewItem]:
    path = folder / QUEUE_FILE
    if not path.is_file():
        return []
    items = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            row["guesses"] = [tuple(g) for g in row["guesses"]]
            items.append(ReviewItem(**row))
    return items


def _read_done(folder: Path) -> dict[str, str | None]:
    path = folder / DONE_FILE
    if not path.is_file():
        return {}
    rows = (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    return {row["id"]: row["label"] for row in rows}
