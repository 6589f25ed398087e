"""Which inputs a person should label first (pure numpy; the review queue and the benchmark use it).

margin     top-1 minus top-2 probability of one classification: small = the model hesitates
           between two intents (the border cases it gets wrong most often)
novelty    cosine distance from an input's embedding to the nearest row of the reference sample
           (the trainer's reference_stats.json): large = unlike anything seen in validation
entropy    of the whole (calibrated) probability vector: large = the model hesitates among several
ordering   "entropy" (default): largest entropy first; of the rules measured in
           benchmarks/ACTIVE_LEARNING_RESULTS.md it caught the most model mistakes per label (51% of
           20 labels vs 13.5% for random, 10 seeds). "uncertainty": smallest margin first.
           "diverse": k-means over the embeddings, then round robin over the clusters, each
           cluster's items by margin, so a labelling budget of 50 is spread over topics instead of
           spent on the single most confusing one
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

Rule = Literal["entropy", "uncertainty", "diverse"]
KMEANS_ITERATIONS = 25


def margin(probabilities: Sequence[float]) -> float:
    """Top-1 minus top-2 probability (1.0 for a single class).

    >>> round(margin([0.5, 0.3, 0.2]), 3)
    0.2
    """
    top = sorted(probabilities, reverse=True)
    return float(top[0] - top[1]) if len(top) > 1 else 1.0


def entropy(probabilities: Sequence[float]) -> float:
    """Shannon entropy in nats (0 for a sure answer, log(n) for a uniform one).

    >>> round(entropy([0.5, 0.5]), 4)
    0.6931
    """
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-12, 1.0)
    return float(-(p * np.log(p)).sum())


def top_two(probabilities: Sequence[float], labels: Sequence[str]) -> list[tuple[str, float]]:
    """The two most likely labels with their probabilities, most likely first."""
    order = sorted(range(len(probabilities)), key=lambda i: -probabilities[i])[:2]
    return [(labels[i], float(probabilities[i])) for i in order]


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    x = x.reshape(1, -1) if x.ndim == 1 else x
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.asarray(x / np.where(norms == 0, 1.0, norms))


def novelty(embeddings: np.ndarray, reference_sample: np.ndarray) -> np.ndarray:
    """Per row of `embeddings`: 1 - the highest cosine similarity to any reference row."""
    if reference_sample.size == 0:
        return np.zeros(len(embeddings))
    sims = _unit(embeddings) @ _unit(reference_sample).T
    return np.asarray(1.0 - sims.max(axis=1))


def kmeans(embeddings: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Cluster id per row: spherical k-means (cosine), k-means++ seeding, fixed iterations."""
    x = _unit(embeddings)
    n = len(x)
    k = max(1, min(k, n))
    rng = np.random.default_rng(seed)
    centres = [x[rng.integers(n)]]
    for _ in range(1, k):
        d = np.clip(1.0 - (x @ np.stack(centres).T).max(axis=1), 0.0, None)
        if d.sum() <= 0:
            break
        centres.append(x[rng.choice(n, p=d / d.sum())])
    c = np.stack(centres)
    assign = np.zeros(n, dtype=int)
    for _ in range(KMEANS_ITERATIONS):
        assign = (x @ c.T).argmax(axis=1)
        for j in range(len(c)):
            members = x[assign == j]
            if len(members):
                c[j] = _unit(members.mean(axis=0))[0]
    return assign


def order_for_labelling(
    margins: Sequence[float],
    embeddings: np.ndarray | None,
    rule: Rule,
    clusters: int = 8,
    seed: int = 0,
    entropies: Sequence[float] | None = None,
) -> list[int]:
    """Indices in the order a person should label them ("entropy" without `entropies`: by margin).

    >>> order_for_labelling([0.9, 0.1, 0.5], None, "uncertainty")
    [1, 2, 0]
    >>> order_for_labelling([0.9, 0.1, 0.5], None, "entropy", entropies=[0.2, 0.1, 0.9])
    [2, 0, 1]
    """
    if rule == "entropy" and entropies is not None:
        return sorted(range(len(margins)), key=lambda i: (-entropies[i], i))
    by_margin = sorted(range(len(margins)), key=lambda i: (margins[i], i))
    if rule != "diverse" or embeddings is None or len(margins) <= 1:
        return by_margin
    assign = kmeans(embeddings, clusters, seed)
    queues = [[i for i in by_margin if assign[i] == c] for c in sorted(set(assign.tolist()))]
    order: list[int] = []
    while any(queues):
        heads = sorted((q for q in queues if q), key=lambda q: (margins[q[0]], q[0]))
        order += [q.pop(0) for q in heads]  # one per cluster per round, the most uncertain first
    return order
