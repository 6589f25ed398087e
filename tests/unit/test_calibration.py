"""Temperature scaling (trainer), the label-free estimates the server exports from it, and accuracy
per language of rows that carry one."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from kubetune_trainer.data import load_task_data
from kubetune_trainer.errors import DataValidationError
from kubetune_trainer.evaluate import accuracy_per_language
from kubetune_trainer.serve.adapters import adapter_temperature
from kubetune_trainer.serve.config import AdapterSpec
from kubetune_trainer.serve.errors import AdapterLoadError
from kubetune_trainer.serve.estimated_accuracy import RollingMean, TrafficEstimates
from kubetune_trainer.serve.metrics import ServeMetrics
from kubetune_trainer.temperature import (
    MIN_TRAIN_ROWS,
    calibrate,
    calibration_split,
    expected_calibration_error,
    fit_temperature,
    scaled,
)
from test_trainer_data import make_config, write_jsonl


def overconfident(rows: int, true_t: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities softmax(z) for labels drawn from softmax(z / true_t): a model too sure by true_t."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 3, size=(rows, 5))
    truth = np.array(
        [rng.choice(5, p=p) for p in scaled(np.exp(z) / np.exp(z).sum(1, keepdims=True), true_t)]
    )
    return np.exp(z) / np.exp(z).sum(1, keepdims=True), truth


def test_fit_temperature_recovers_the_overconfidence_and_lowers_the_calibration_error() -> None:
    probs, truth = overconfident(4000, 2.0)
    assert fit_temperature(probs, truth) == pytest.approx(2.0, rel=0.15)
    result = calibrate(probs, truth)
    assert result.rows == 4000
    assert result.ece_after is not None and result.ece_before is not None
    assert result.ece_after < result.ece_before / 2


def test_scaling_keeps_the_answer_and_a_calibrated_model_keeps_t_near_one() -> None:
    probs, truth = overconfident(3000, 1.0, seed=1)
    assert fit_temperature(probs, truth) == pytest.approx(1.0, abs=0.15)
    assert (scaled(probs, 3.0).argmax(1) == probs.argmax(1)).all()
    assert calibrate(np.zeros((0, 3)), np.zeros(0, dtype=int)).temperature == 1.0


def test_expected_calibration_error_of_a_perfect_and_a_wrong_model() -> None:
    sure_right = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(sure_right, np.array([0, 1])) == 0.0
    assert expected_calibration_error(sure_right, np.array([1, 0])) == 1.0


def test_calibration_split_never_trains_on_a_held_out_row() -> None:
    rows = [f"row {i}" for i in range(300)]
    weighted = rows + rows[:100]  # dataset.extra at weight 2 repeats rows
    train, held = calibration_split(weighted, seed=7)
    assert len(held) == 30 and not set(held) & set(train)
    assert len(train) + sum(weighted.count(h) for h in held) == len(weighted)
    assert calibration_split(weighted, seed=7) == (train, held)
    assert calibration_split(rows[: MIN_TRAIN_ROWS - 1], seed=7)[1] == []


def test_rolling_mean_keeps_only_the_window() -> None:
    window = RollingMean(3)
    assert window.mean() is None
    window.extend([1.0, 1.0, 0.0, 0.0, 0.0])
    assert window.mean() == 0.0
    window.extend([1.0])
    assert window.mean() == pytest.approx(1 / 3)


def test_traffic_estimates_export_accuracy_and_review_rate_then_forget() -> None:
    metrics = ServeMetrics()
    estimates = TrafficEstimates(metrics.accuracy_estimated, metrics.review_rate, window=4)
    metrics.before_render.append(estimates.refresh)
    estimates.observe("intent", "v1", [0.9, 0.5])
    estimates.observe_review("intent", "v1", [False, True, True, True])
    text = metrics.render().decode()
    assert 'kubetune_accuracy_estimated{adapter="intent",version="v1"} 0.7' in text
    assert 'kubetune_review_rate{adapter="intent",version="v1"} 0.75' in text
    estimates.forget("intent", "v1")
    assert "kubetune_accuracy_estimated{" not in metrics.render().decode()


@pytest.mark.parametrize("value", [0, -1.0, "2", math.nan, math.inf, True])
def test_a_served_adapter_with_a_bad_temperature_is_refused(value: object) -> None:
    spec = AdapterSpec(name="intent", version="v1", uri="/adapters/intent")
    with pytest.raises(AdapterLoadError, match="temperature"):
        adapter_temperature(spec, {"temperature": value})
    assert adapter_temperature(spec, {}) == 1.0
    assert adapter_temperature(spec, {"temperature": 1.7}) == 1.7


def test_rows_with_a_language_are_scored_per_language(tmp_path: Path) -> None:
    rows = [
        {"text": "refund please", "label": "billing_refund", "language": "en"},
        {"text": "devuélvanme el dinero", "label": "billing_refund", "language": "es"},
        {"text": "someone used my card", "label": "fraud_report"},
    ]
    write_jsonl(tmp_path / "train.jsonl", rows)
    data = load_task_data(make_config(tmp_path, "train.jsonl", "train.jsonl"))
    assert [e.language for e in data.validation] == ["en", "es", None]  # type: ignore[union-attr]
    correct = [True, False, True]
    assert accuracy_per_language(correct, [e.language for e in data.validation]) == {  # type: ignore[union-attr]
        "accuracy_language_en": 1.0,
        "accuracy_language_es": 0.0,
    }
    write_jsonl(tmp_path / "bad.jsonl", [{**rows[0], "language": 7}])
    with pytest.raises(DataValidationError, match=r"bad\.jsonl row 1: field 'language' must be a non-empty"):
        load_task_data(make_config(tmp_path, "bad.jsonl"))
