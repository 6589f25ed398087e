"""The retrain gate's statistics (pure): Newcombe's paired interval and the trainer's 2x2 table."""

from __future__ import annotations

import pytest
from kubetune_operator.paired_difference import paired_difference, wilson_interval
from kubetune_trainer.data import ChatExample, ClassificationExample
from kubetune_trainer.paired import paired_counts, truth_per_row


def test_newcombe_interval_matches_the_published_example() -> None:
    """Fagerland, Lydersen & Laake (2017), ch. 8, Cavo et al. (2012): 59, 6, 16, 80 paired outcomes give
    -0.0621 (95% CI -0.1186 to -0.0046) by the Newcombe square-and-add interval."""
    d = paired_difference(59, 6, 16, 80)
    assert (d.rows, d.confidence) == (161, 0.95)
    assert d.difference == pytest.approx(-0.0621, abs=1e-4)
    assert (d.lower, d.upper) == (pytest.approx(-0.1186, abs=1e-4), pytest.approx(-0.0046, abs=1e-4))


def test_interval_is_symmetric_in_the_two_adapters_and_narrows_with_rows() -> None:
    a, b = paired_difference(100, 8, 1, 11), paired_difference(100, 1, 8, 11)
    assert (a.lower, a.upper) == (pytest.approx(-b.upper), pytest.approx(-b.lower))
    # Both perfect: a tie of unknown size, never a zero-width interval; more rows, narrower.
    five, fifty = paired_difference(5, 0, 0, 0), paired_difference(50, 0, 0, 0)
    assert five.lower < 0 < five.upper and fifty.lower < 0 < fifty.upper
    assert five.upper - five.lower > fifty.upper - fifty.lower > 0
    # Stays within [-1, 1] at the extremes.
    assert paired_difference(0, 10, 0, 0).upper <= 1 and paired_difference(0, 0, 10, 0).lower >= -1
    with pytest.raises(ValueError, match="at least one row"):
        paired_difference(0, 0, 0, 0)


def test_wilson_interval_stays_open_at_0_and_1() -> None:
    low, high = wilson_interval(0, 20, 1.96)
    assert low == 0 and 0 < high < 0.2
    assert wilson_interval(20, 20, 1.96)[1] == 1


def test_trainer_counts_rows_by_who_answered_right() -> None:
    truth = truth_per_row([ClassificationExample("a", 0), ClassificationExample("b", 1)], ["x", "y"])
    assert truth == ["x", "y"]
    table = paired_counts(truth, ["x", "x"], ["y", "y"], classification=True)
    assert (table.both, table.challenger_only, table.champion_only, table.neither) == (0, 1, 1, 0)
    assert table.rows == 2 and table.metric == "accuracy"
    with pytest.raises(ValueError, match="rows differ"):
        paired_counts(truth, ["x"], ["y", "y"], classification=True)


def test_causal_rows_are_right_on_the_intent_and_need_one() -> None:
    chat = ChatExample((("user", "my card was stolen"), ("assistant", '{"intent": "fraud_report"}')))
    truth = truth_per_row([chat], [])
    assert truth == ["fraud_report"]
    table = paired_counts(truth, ["fraud_report"], ["<invalid>"], classification=False)
    assert (table.metric, table.challenger_only) == ("intent_exact_match", 1)
    assert truth_per_row([ChatExample((("user", "hi"), ("assistant", "hello")))], []) is None
