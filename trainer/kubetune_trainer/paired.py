"""The new adapter and the champion row by row on the same validation rows: the 2x2 table that the
operator's paired retrain gate reads (TrainResult.paired). A row counts as answered right when the
predicted label is the true one (classification) or the answer's intent is the reference's (causal-lm
triage); a causal task without intents reports no table.
"""

from __future__ import annotations

from collections.abc import Sequence

from kubetune.api.finetunejob import PairedCounts
from kubetune_trainer.data import ChatExample, ClassificationExample, Example
from kubetune_trainer.evaluate import parse_json_object


def truth_per_row(examples: Sequence[Example], labels: Sequence[str]) -> list[str] | None:
    """What a right answer is, per row, in the form Evaluation.predicted has; None: no per-row truth.

    >>> truth_per_row([ClassificationExample("hi", 1)], ["billing", "greeting"])
    ['greeting']
    """
    truth: list[str] = []
    for example in examples:
        if isinstance(example, ClassificationExample):
            truth.append(labels[example.label])
            continue
        reference = example.messages[-1][1] if isinstance(example, ChatExample) else example.completion
        parsed = parse_json_object(reference)
        if parsed is None or "intent" not in parsed:
            return None
        truth.append(str(parsed["intent"]))
    return truth


def paired_counts(
    truth: Sequence[str], challenger: Sequence[str], champion: Sequence[str], classification: bool
) -> PairedCounts:
    """Count the rows by (challenger right?, champion right?).

    >>> paired_counts(["a", "b", "c"], ["a", "b", "x"], ["a", "x", "c"], True).model_dump()
    {'metric': 'accuracy', 'both': 1, 'challenger_only': 1, 'champion_only': 1, 'neither': 0}
    """
    if not len(truth) == len(challenger) == len(champion):
        raise ValueError(f"rows differ: {len(truth)} truth, {len(challenger)} vs {len(champion)} answers")
    cells = [0, 0, 0, 0]  # both, challenger only, champion only, neither
    for right, new, old in zip(truth, challenger, champion, strict=True):
        cells[(new != right) * 2 + (old != right)] += 1
    both, challenger_only, champion_only, neither = cells
    return PairedCounts(
        metric="accuracy" if classification else "intent_exact_match",
        both=both,
        challenger_only=challenger_only,
        champion_only=champion_only,
        neither=neither,
    )
