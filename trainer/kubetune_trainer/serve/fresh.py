"""The fresh dataset for retraining: labelled traffic kept on the serving volume.

Layout and split follow kubetune.api.monitoring.fresh_data_uris: <dir>/<adapter>/train.jsonl and
holdout.jsonl, rows {"text", "label"} (+ "metadata" when the request carried some, scrubbed of PII),
each text always on the same side (sha256 of the text, HOLDOUT_PERCENT of the hash space held out).

Writers: one server process per pod, several pods on one PVC. Each append takes an exclusive flock
on <dir>/<adapter>/.lock and appends one line; once a file passes its cap by COMPACT_SLACK it is
rewritten to the newest rows in a temp file and renamed over the old one (readers never see half).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune.api.monitoring import FRESH_HOLDOUT_FILE, FRESH_HOLDOUT_PERCENT, FRESH_TRAIN_FILE

HOLDOUT_PERCENT = FRESH_HOLDOUT_PERCENT  # the operator's retrain gate reads the same share
COMPACT_SLACK = 0.1  # rewrite once a file holds 10% more than its share of the cap
INPUT_MEMORY = 10_000  # same bound as feedback.PREDICTION_MEMORY


def is_holdout(text: str) -> bool:
    """Deterministic: the same text always lands on the same side, across pods and restarts."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") % 100 < HOLDOUT_PERCENT


def scrub_metadata(
    metadata: dict[str, Any] | None, drop: list[str], hashed: list[str], salt: str
) -> dict[str, Any]:
    """Request metadata minus `drop` fields, with `hashed` fields replaced by a salted sha256.

    >>> scrub_metadata({"email": "a@b", "tier": "gold", "ssn": "1"}, ["ssn"], ["email"], "s")["tier"]
    'gold'
    """
    out: dict[str, Any] = {}
    for key, value in (metadata or {}).items():
        if key in drop:
            continue
        if key in hashed:
            value = "sha256:" + hashlib.sha256(f"{salt}:{value}".encode()).hexdigest()
        out[key] = value
    return out


@dataclass(frozen=True)
class RememberedInput:
    texts: tuple[str, ...]
    metadata: dict[str, Any]


class InputMemory:
    """Bounded LRU request id -> inputs (already scrubbed), kept only while fresh data is collected."""

    def __init__(self, capacity: int = INPUT_MEMORY) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, RememberedInput] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, request_id: str, item: RememberedInput) -> None:
        with self._lock:
            self._items[request_id] = item
            self._items.move_to_end(request_id)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def get(self, request_id: str) -> RememberedInput | None:
        with self._lock:
            return self._items.get(request_id)

    def __len__(self) -> int:
        return len(self._items)


class FreshDataWriter:
    """Appends labelled rows for one server; caps each adapter's files at max_rows (oldest dropped)."""

    def __init__(self, directory: Path, max_rows: int) -> None:
        self.directory = directory
        # The cap is split by the hold-out share, so train + holdout together stay within max_rows.
        self.caps = {
            FRESH_TRAIN_FILE: max(1, max_rows * (100 - HOLDOUT_PERCENT) // 100),
            FRESH_HOLDOUT_FILE: max(1, max_rows * HOLDOUT_PERCENT // 100),
        }
        self._lock = threading.Lock()  # threads of this process; flock covers other pods
        self._counts: dict[Path, int] = {}  # lines per file as of our last read, plus our appends

    def append(self, adapter: str, text: str, label: str, metadata: dict[str, Any] | None = None) -> Path:
        """Write one row; returns the file it went to."""
        folder = self.directory / adapter
        name = FRESH_HOLDOUT_FILE if is_holdout(text) else FRESH_TRAIN_FILE
        row = {"text": text, "label": label, **({"metadata": metadata} if metadata else {})}
        line = (json.dumps(row, ensure_ascii=False) + "\n").encode()
        with self._lock:
            folder.mkdir(parents=True, exist_ok=True)
            with (folder / ".lock").open("a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    path = folder / name
                    if path not in self._counts:
                        self._counts[path] = _count_lines(path)
                    with path.open("ab") as f:
                        f.write(line)
                    self._counts[path] += 1
                    if self._counts[path] > self.caps[name] * (1 + COMPACT_SLACK):
                        self._counts[path] = _keep_newest(path, self.caps[name])
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)
        return folder / name


def _count_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.is_file() else 0


def _keep_newest(path: Path, cap: int) -> int:
    """Rewrite `path` to its last `cap` lines (temp file + rename); returns the lines kept.

    Counts are per writer, so with several pods a file may grow past cap * (1 + COMPACT_SLACK) until
    one of them compacts; it never grows without bound."""
    lines = path.read_bytes().splitlines(keepends=True)[-cap:]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(b"".join(lines))
    os.replace(tmp, path)
    return len(lines)
