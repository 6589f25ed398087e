"""How sure a champion/challenger comparison is (pure): a confidence interval for the difference of two
accuracies measured on the same rows.

Method: Newcombe's hybrid score ("square-and-add") interval for paired proportions, method 10 of
R. G. Newcombe, "Improved confidence intervals for the difference between binomial proportions based
on paired data", Statistics in Medicine 17 (1998) 2635-2650; as given in Fagerland, Lydersen & Laake,
*Statistical Analysis of Contingency Tables* (2017), ch. 8. It combines the Wilson score intervals of
both accuracies with their correlation, so it

- is paired: rows both adapters answer alike (most of them) do not widen it, unlike two independent
  intervals;
- needs only the 2x2 table (both right, only the challenger, only the champion, neither), which the
  trainer reports, so no per-row data travels through the termination message;
- is deterministic (no resampling seed) and keeps a width where a Wald or bootstrap interval collapses
  to 0: 5/5 vs 5/5 is a tie of unknown size, not a certain one;
- stays inside [-1, 1] with good coverage on small tables (Newcombe's and Fagerland's evaluations).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

CONFIDENCE = 0.95


@dataclass(frozen=True)
class PairedDifference:
    """challenger - champion share of ``rows`` answered right, with its interval at ``confidence``."""

    rows: int
    difference: float
    lower: float
    upper: float
    confidence: float = CONFIDENCE


def wilson_interval(successes: int, n: int, z: float) -> tuple[float, float]:
    """Wilson's score interval for a proportion (E. B. Wilson 1927).

    >>> [round(v, 4) for v in wilson_interval(5, 5, 1.959964)]
    [0.5655, 1.0]
    """
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_difference(
    both: int, challenger_only: int, champion_only: int, neither: int, confidence: float = CONFIDENCE
) -> PairedDifference:
    """Newcombe's paired interval for (challenger accuracy - champion accuracy).

    The worked example of Fagerland et al. (Cavo et al. 2012: 59, 6, 16, 80):

    >>> d = paired_difference(59, 6, 16, 80)
    >>> round(d.difference, 4), round(d.lower, 4), round(d.upper, 4)
    (-0.0621, -0.1186, -0.0046)
    """
    n = both + challenger_only + champion_only + neither
    if n <= 0 or min(both, challenger_only, champion_only, neither) < 0:
        raise ValueError(f"a paired table needs non-negative counts and at least one row, got n={n}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    right_new, right_old = both + challenger_only, both + champion_only
    p1, p2 = right_new / n, right_old / n
    l1, u1 = wilson_interval(right_new, n, z)
    l2, u2 = wilson_interval(right_old, n, z)
    phi = _continuity_corrected_phi(both, challenger_only, champion_only, neither)
    below = math.sqrt(max(0.0, (p1 - l1) ** 2 + (u2 - p2) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2)))
    above = math.sqrt(max(0.0, (p2 - l2) ** 2 + (u1 - p1) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1)))
    difference = p1 - p2
    return PairedDifference(
        n, difference, max(-1.0, difference - below), min(1.0, difference + above), confidence
    )


def _continuity_corrected_phi(a: int, b: int, c: int, d: int) -> float:
    """The correlation of the two accuracies over the rows, with Newcombe's continuity correction
    (0 when a margin is empty: nothing to correlate)."""
    n = a + b + c + d
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    if margins == 0:
        return 0.0
    cross = a * d - b * c
    if cross > n / 2:
        return (cross - n / 2) / math.sqrt(margins)
    return 0.0 if cross >= 0 else cross / math.sqrt(margins)
