"""Drift statistics with worked examples, the sliding window, the monitor's gauges, and fresh data."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import numpy as np
import pytest
from kubetune_trainer.serve.drift import (
    DriftMonitor,
    Reference,
    Window,
    bin_index,
    cosine_distance,
    histogram_mean,
    mmd_rbf,
    psi,
)
from kubetune_trainer.serve.fresh import (
    FreshDataWriter,
    InputMemory,
    RememberedInput,
    is_holdout,
    scrub_metadata,
)
from kubetune_trainer.serve.metrics import ServeMetrics

LABELS = ["a", "b", "c"]


def stats(dim: int = 4, seed: int = 0) -> dict[str, object]:
    rng = np.random.default_rng(seed)
    sample = rng.normal(size=(64, dim))
    return {
        "rows": 64,
        "predictionDistribution": {"a": 0.5, "b": 0.3, "c": 0.2},
        "confidenceHistogram": {"edges": list(np.linspace(0, 1, 11)), "counts": [0] * 8 + [2, 8]},
        "embeddingCentroid": sample.mean(0).tolist(),
        "embeddingSample": sample.tolist(),
        "inputLengthHistogram": {"edges": list(np.linspace(0, 100, 11)), "counts": [0, 5, 10, 5] + [0] * 6},
    }


# ---- pure statistics, worked examples ---------------------------------------------------------------


def test_psi_of_identical_distributions_is_zero() -> None:
    assert psi([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]) == 0.0
    assert psi([2, 3, 5], [20, 30, 50]) == pytest.approx(0.0)  # counts and shares alike


def test_psi_worked_example_and_known_shift_above_the_usual_threshold() -> None:
    # (0.9 - 0.5) ln(0.9/0.5) + (0.1 - 0.5) ln(0.1/0.5) = 0.2351 + 0.6438
    assert psi([0.5, 0.5], [0.9, 0.1]) == pytest.approx(0.4 * math.log(1.8) + 0.4 * math.log(5), rel=1e-6)
    assert psi([0.5, 0.5], [0.9, 0.1]) > 0.2
    assert psi([0.5, 0.5], [0.55, 0.45]) < 0.1  # a small wobble is not drift


def test_psi_with_an_empty_bin_stays_finite() -> None:
    value = psi([0.5, 0.5, 0.0], [0.0, 0.5, 0.5])
    assert math.isfinite(value) and value > 1


def test_bin_index_clips_to_the_end_bins_like_the_trainer() -> None:
    edges = [0, 10, 20, 30]
    assert [bin_index(v, edges) for v in (-5, 0, 9.9, 10, 25, 30, 999)] == [0, 0, 0, 1, 2, 2, 2]


def test_histogram_mean_uses_bin_centres() -> None:
    assert histogram_mean([1, 1], [0, 1, 2]) == pytest.approx(1.0)
    assert histogram_mean([0, 3], [0.0, 0.5, 1.0]) == pytest.approx(0.75)


def test_cosine_distance_of_identical_centroids_is_zero_and_orthogonal_is_one() -> None:
    v = np.array([0.3, -1.2, 2.0])
    assert cosine_distance(v, v.copy()) == pytest.approx(0.0, abs=1e-12)
    assert cosine_distance(v, 3 * v) == pytest.approx(0.0, abs=1e-12)
    assert cosine_distance(np.array([1.0, 0]), np.array([0, 1.0])) == pytest.approx(1.0)
    assert cosine_distance(np.zeros(3), v) == 0.0


def test_mmd_small_for_the_same_distribution_large_for_a_shifted_one() -> None:
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(200, 16))
    same = rng.normal(size=(200, 16))
    shifted = rng.normal(loc=1.0, size=(200, 16))
    small, large = mmd_rbf(same, ref), mmd_rbf(shifted, ref)
    assert small < 0.02
    assert large > 10 * small and large > 0.1
    assert mmd_rbf(ref, ref) == pytest.approx(0.0, abs=1e-12)


# ---- the window ------------------------------------------------------------------------------------


def test_window_matching_the_reference_scores_near_zero_and_a_shift_scores_high() -> None:
    ref = Reference.from_stats(stats())
    calm = Window(ref, size=100)
    rng = np.random.default_rng(0)
    for label, n in (("a", 50), ("b", 30), ("c", 20)):
        for i in range(n):
            calm.add(
                label, 0.95, [15, 25, 25, 35][i % 4], ref.centroid + rng.normal(0, 0.01, ref.centroid.size)
            )
    s = calm.scores()
    assert s["label_psi"] < 0.01 and s["length_psi"] < 0.01
    assert abs(s["confidence_drop"]) < 0.06
    assert s["embedding_cosine"] < 0.01

    drifted = Window(ref, size=100)
    for _ in range(100):
        drifted.add("c", 0.45, 95, -ref.centroid)
    d = drifted.scores()
    assert d["label_psi"] > 1 and d["length_psi"] > 1
    assert d["confidence_drop"] == pytest.approx(
        histogram_mean([0] * 8 + [2, 8], ref.confidence_edges) - 0.45
    )
    assert d["embedding_cosine"] == pytest.approx(2.0)


def test_window_slides_old_inputs_out_of_the_running_sums() -> None:
    ref = Reference.from_stats(stats())
    w = Window(ref, size=10)
    for _ in range(10):
        w.add("c", 0.45, 95, -ref.centroid)
    for _ in range(10):
        w.add("a", 0.95, 25, ref.centroid)
    assert len(w.labels) == 10 and w.label_counts.tolist() == [10, 0, 0]
    assert w.length_counts.sum() == 10 and w.confidence_counts.sum() == 10
    assert w.scores()["embedding_cosine"] == pytest.approx(0.0, abs=1e-9)
    w.add("unknown-label", 0.9, 25, None)  # an unknown label counts as no known label, never crashes
    assert w.label_counts.sum() == 9


# ---- the monitor -----------------------------------------------------------------------------------


def gauge(metrics: ServeMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_monitor_exports_every_kind_and_the_window_size_and_mmd_off_the_request_path(tmp_path: Path) -> None:
    (tmp_path / "out" / "adapter").mkdir(parents=True)
    (tmp_path / "out" / "reference_stats.json").write_text(json.dumps(stats()))
    metrics = ServeMetrics()
    monitor = DriftMonitor(metrics.drift_score, metrics.drift_window, window_size=50, mmd_every=20)
    assert monitor.load_reference("m", "v1", tmp_path / "out" / "adapter")
    ref = Reference.from_stats(stats())
    called_from: list[str] = []
    real = monitor._background.submit

    def spy(fn, *args):  # type: ignore[no-untyped-def]
        called_from.append(threading.current_thread().name)
        return real(fn, *args)

    monitor._background.submit = spy  # type: ignore[method-assign]
    for _ in range(4):
        monitor.observe("m", "v1", ["c"] * 10, [0.4] * 10, [90] * 10, [-ref.centroid] * 10)
    assert gauge(metrics, "kubetune_drift_score", adapter="m", version="v1", kind="label_psi") is None
    assert not called_from, "nothing is scored on the request path"
    metrics.before_render.append(monitor.refresh)
    assert b'kind="label_psi"' in metrics.render()  # a scrape scores the window and starts the MMD
    monitor._background.shutdown(wait=True)
    for kind in ("label_psi", "length_psi", "confidence_drop", "embedding_cosine", "embedding_mmd"):
        value = gauge(metrics, "kubetune_drift_score", adapter="m", version="v1", kind=kind)
        assert value is not None and value > 0.1, kind
    assert gauge(metrics, "kubetune_drift_window_size", adapter="m", version="v1") == 40
    assert called_from and all(name == threading.current_thread().name for name in called_from)
    monitor.forget("m", "v1")
    assert gauge(metrics, "kubetune_drift_window_size", adapter="m", version="v1") is None


def test_missing_or_broken_reference_disables_drift_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = ServeMetrics()
    monitor = DriftMonitor(metrics.drift_score, metrics.drift_window, window_size=50)
    assert not monitor.load_reference("m", "v1", tmp_path)
    (tmp_path / "reference_stats.json").write_text("{not json")
    assert not monitor.load_reference("m", "v2", tmp_path)
    monitor.observe("m", "v1", ["a"], [0.9], [10], [None])  # not watched: ignored, no crash
    assert "drift disabled for m@v1" in caplog.text and "drift disabled for m@v2" in caplog.text
    assert gauge(metrics, "kubetune_drift_window_size", adapter="m", version="v1") is None


# ---- fresh data ------------------------------------------------------------------------------------


def test_holdout_split_is_deterministic_and_about_a_fifth() -> None:
    texts = [f"ticket number {i}" for i in range(2000)]
    held = [t for t in texts if is_holdout(t)]
    assert 0.16 < len(held) / len(texts) < 0.24
    assert held == [t for t in texts if is_holdout(t)]


def test_scrub_metadata_drops_and_hashes() -> None:
    out = scrub_metadata({"email": "a@b.c", "ssn": "123", "tier": "gold"}, ["ssn"], ["email"], "salt")
    assert set(out) == {"email", "tier"} and out["tier"] == "gold"
    assert out["email"].startswith("sha256:") and "a@b.c" not in out["email"]
    assert scrub_metadata(None, ["x"], [], "s") == {}


def test_input_memory_is_bounded_lru() -> None:
    memory = InputMemory(capacity=2)
    for rid in ("r1", "r2", "r3"):
        memory.remember(rid, RememberedInput((rid,), {}))
    assert memory.get("r1") is None and memory.get("r3") is not None and len(memory) == 2


def test_fresh_writer_splits_caps_oldest_first_and_survives_concurrent_writers(tmp_path: Path) -> None:
    writers = [FreshDataWriter(tmp_path, max_rows=100) for _ in range(2)]  # two pods, one volume
    texts = [f"my EV charger subscription issue #{i}" for i in range(300)]

    def write(writer: FreshDataWriter, chunk: list[str]) -> None:
        for t in chunk:
            writer.append("intents", t, "billing_refund", {"tier": "gold"})

    threads = [threading.Thread(target=write, args=(w, texts[i::2])) for i, w in enumerate(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    train = [json.loads(x) for x in (tmp_path / "intents" / "train.jsonl").read_text().splitlines()]
    holdout = [json.loads(x) for x in (tmp_path / "intents" / "holdout.jsonl").read_text().splitlines()]
    assert all(is_holdout(r["text"]) for r in holdout) and not any(is_holdout(r["text"]) for r in train)
    assert all(set(r) == {"text", "label", "metadata"} for r in train + holdout)
    # each file is compacted to its share of the cap once it passes it by 10% (per writer's count)
    assert len(train) <= 80 * 1.1 * 2 and len(holdout) <= 20 * 1.1 * 2
    assert texts[-1] in {r["text"] for r in train + holdout}  # the newest rows are kept
    assert texts[0] not in {r["text"] for r in train + holdout}  # the oldest went
    assert not list((tmp_path / "intents").glob(".*.tmp"))
