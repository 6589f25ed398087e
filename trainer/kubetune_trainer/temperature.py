"""Temperature scaling (Guo et al. 2017): one scalar T that turns a classifier's over- or under-confident
softmax into probabilities that mean what they say, fitted on rows the model never trained on.

A fine-tuned classifier is scored on its training rows with near-certainty, so T is fitted on a
calibration split held out of the training rows before training (never the validation rows, which the
report and the gate use). T is saved in the adapter's kubetune.json; the server divides the logits by
it, so the argmax (the answer) never changes, only how sure the answer claims to be. The review
margin, the drift monitor's confidence and kubetune_accuracy_estimated all read the calibrated
probabilities.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any, TypeVar

import numpy as np

CALIBRATION_SHARE = 0.1  # of the unique training rows
MIN_CALIBRATION_ROWS = 20  # fewer held-out rows fit T too noisily to be worth the rows taken
MIN_TRAIN_ROWS = 200  # below this every row is needed for training; T stays 1
T_BOUNDS = (0.05, 20.0)
ECE_BINS = 10

E = TypeVar("E")


def calibration_split(train: list[E], seed: int) -> tuple[list[E], list[E]]:
    """(rows to train on, held-out calibration rows): CALIBRATION_SHARE of the distinct rows, chosen by
    a seeded shuffle. A row repeated in train (dataset.extra weight > 1) leaves with every copy, so
    no calibration row is also trained on. Too few rows: nothing is held out.

    >>> calibration_split(list(range(10)), 0)
    ([0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [])
    """
    distinct = list(dict.fromkeys(train))
    held = round(CALIBRATION_SHARE * len(distinct))
    if len(train) < MIN_TRAIN_ROWS or held < MIN_CALIBRATION_ROWS:
        return list(train), []
    random.Random(seed).shuffle(distinct)
    chosen = set(distinct[:held])
    return [e for e in train if e not in chosen], [e for e in dict.fromkeys(train) if e in chosen]


def scaled(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T): the same as softmax(logits / T), since softmax ignores a per-row shift.

    >>> scaled(np.array([[0.5, 0.5]]), 2.0).round(2).tolist()
    [[0.5, 0.5]]
    """
    logits = np.log(np.clip(probabilities, 1e-12, 1.0)) / temperature
    logits -= logits.max(axis=-1, keepdims=True)
    e = np.exp(logits)
    return np.asarray(e / e.sum(axis=-1, keepdims=True))


def nll(probabilities: np.ndarray, truth: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes."""
    picked = probabilities[np.arange(len(truth)), truth]
    return float(-np.log(np.clip(picked, 1e-12, 1.0)).mean())


def fit_temperature(probabilities: np.ndarray, truth: np.ndarray) -> float:
    """The T in T_BOUNDS minimising the NLL of `truth` under scaled(probabilities, T) (1.0 without rows)."""
    from scipy.optimize import minimize_scalar

    if len(truth) == 0:
        return 1.0
    low, high = np.log(T_BOUNDS)
    best = minimize_scalar(
        lambda log_t: nll(scaled(probabilities, float(np.exp(log_t))), truth),
        bounds=(low, high),
        method="bounded",
    )
    return float(np.exp(best.x))


def expected_calibration_error(probabilities: np.ndarray, truth: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: |accuracy - mean confidence| per equal-width confidence bin, weighted by the bin's rows.

    >>> expected_calibration_error(np.array([[0.9, 0.1], [0.9, 0.1]]), np.array([0, 1]))
    0.4
    """
    confidence = probabilities.max(axis=-1)
    correct = probabilities.argmax(axis=-1) == truth
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges[1:-1], confidence, side="right"), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        rows = which == b
        if rows.any():
            total += rows.mean() * abs(correct[rows].mean() - confidence[rows].mean())
    return round(float(total), 6)


@dataclasses.dataclass(frozen=True)
class Calibration:
    """What the model card, metrics.json and kubetune.json record about the fit."""

    temperature: float
    rows: int
    ece_before: float | None
    ece_after: float | None

    def report(self) -> dict[str, Any]:
        return {
            "temperature": round(self.temperature, 4),
            "rows": self.rows,
            "eceBefore": self.ece_before,
            "eceAfter": self.ece_after,
        }


def calibrate(probabilities: np.ndarray, truth: np.ndarray) -> Calibration:
    """Fit T on held-out rows and measure the calibration error before and after (on the same rows)."""
    if len(truth) == 0:
        return Calibration(1.0, 0, None, None)
    t = fit_temperature(probabilities, truth)
    return Calibration(
        t,
        len(truth),
        expected_calibration_error(probabilities, truth),
        expected_calibration_error(scaled(probabilities, t), truth),
    )
