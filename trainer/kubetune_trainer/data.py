"""Load dataset files, validate every row, split and fingerprint them.

Everything here runs before a model is loaded, so the operator's ValidatingData phase (`kubetune
validate-data`) costs seconds and no GPU. Rows become typed examples; nothing is silently dropped or
replaced: one bad row fails the job with its file, row number and field.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

from kubetune.api.finetunejob import DataFormat, DataSource
from kubetune.api.trainconfig import TrainConfig
from kubetune.api.uris import DATA_RULES, UnsafeUriError, check_uri
from kubetune_trainer.errors import DataSourceError, DataValidationError
from kubetune_trainer.fetch import https_get, s3_endpoint

MAX_REPORTED_ERRORS = 20
CHAT_ROLES = frozenset({"system", "user", "assistant"})


@dataclass(frozen=True)
class ClassificationExample:
    text: str
    label: int
    language: str | None = None  # optional "language" field: evaluation reports accuracy per language


@dataclass(frozen=True)
class ChatExample:
    """A conversation; the loss covers the assistant turns only."""

    messages: tuple[tuple[str, str], ...]  # (role, content)


@dataclass(frozen=True)
class PromptCompletionExample:
    prompt: str
    completion: str


Example = ClassificationExample | ChatExample | PromptCompletionExample


@dataclass(frozen=True)
class TaskData:
    """Validated training and validation examples plus what identifies them."""

    train: list[Example]
    validation: list[Example]
    labels: list[str]  # classification label names by id; empty for causal-lm
    digest: str  # "sha256:<hex>" over the raw bytes of every source, in order
    validation_source: str  # "validation file" or "split of train"


# ---------------------------------------------------------------- reading bytes


def read_source(source: DataSource, config: TrainConfig) -> tuple[bytes, str]:
    """Raw bytes of a dataset location and the file name used in error messages."""
    uri = source.uri
    try:
        check_uri(uri, DATA_RULES, "dataset")
        return _read_checked(uri, config)
    except UnsafeUriError as err:
        raise DataSourceError(str(err)) from None


def _read_checked(uri: str, config: TrainConfig) -> tuple[bytes, str]:
    name = PurePosixPath(urlparse(uri).path).name or uri
    if uri.startswith("https://"):
        return _read_https(uri), name
    if uri.startswith("s3://"):
        return _read_s3(uri), name
    path = Path(config.locate(uri))
    try:
        return path.read_bytes(), name
    except OSError as err:
        raise DataSourceError(f"{uri}: cannot read {path}: {err.strerror or err}") from None


def _read_https(uri: str) -> bytes:
    import httpx

    token = os.environ.get("KUBETUNE_HTTP_BEARER_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        return https_get(uri, DATA_RULES, "dataset", headers, timeout=60.0)
    except httpx.HTTPError as err:
        raise DataSourceError(f"{uri}: download failed: {err}") from None


def _read_s3(uri: str) -> bytes:
    """Credentials and endpoint come from the environment only (AWS_* vars set from the Secret)."""
    import boto3
    import botocore.exceptions

    bucket, _, key = uri[len("s3://") :].partition("/")
    client = boto3.client("s3", endpoint_url=s3_endpoint("dataset"))
    try:
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as err:
        raise DataSourceError(f"{uri}: cannot read from S3: {err}") from None


# ---------------------------------------------------------------- parsing rows


def infer_format(name: str, declared: DataFormat | None) -> DataFormat:
    if declared is not None:
        return declared
    suffix = PurePosixPath(name).suffix.lower()
    formats: dict[str, DataFormat] = {
        ".jsonl": "jsonl",
        ".json": "jsonl",
        ".csv": "csv",
        ".parquet": "parquet",
    }
    if suffix not in formats:
        raise DataSourceError(
            f"{name}: cannot infer the format from {suffix or 'no extension'!r}; "
            "set dataset.format to jsonl, csv or parquet"
        )
    return formats[suffix]


def parse_rows(raw: bytes, fmt: DataFormat, name: str) -> list[tuple[int, Any]]:
    """(row number, row) pairs; jsonl row numbers are line numbers, csv/parquet count data rows from 1."""
    if fmt == "jsonl":
        rows: list[tuple[int, Any]] = []
        for number, line in enumerate(raw.decode("utf-8", errors="strict").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append((number, json.loads(line)))
            except json.JSONDecodeError as err:
                raise DataValidationError(f"{name} row {number}: not valid JSON ({err.msg})") from None
        return rows
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(raw.decode("utf-8")))
        return list(enumerate(reader, start=1))
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(raw))
    return list(enumerate(table.to_pylist(), start=1))


# ---------------------------------------------------------------- validating rows


def _text_field(row: dict[str, Any], field: str) -> str:
    if field not in row or row[field] is None:
        raise ValueError(f"field {field!r} missing")
    value = row[field]
    if not isinstance(value, str):
        raise ValueError(f"field {field!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"field {field!r} is empty")
    return value


def _messages(row: dict[str, Any], field: str) -> tuple[tuple[str, str], ...]:
    if field not in row or row[field] is None:
        raise ValueError(f"field {field!r} missing")
    value = row[field]
    if isinstance(value, str):  # csv cells hold JSON text
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(f"field {field!r} is not a JSON list of messages") from None
    if not isinstance(value, list) or not value:
        raise ValueError(f"field {field!r} must be a non-empty list of messages")
    turns = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or message.get("role") not in CHAT_ROLES:
            raise ValueError(f"field {field!r} message {i}: role must be one of {sorted(CHAT_ROLES)}")
        content = message.get("content")
        if not isinstance(content, str) or not content.strip():
            raise ValueError(f"field {field!r} message {i}: content must be a non-empty string")
        turns.append((message["role"], content))
    if turns[-1][0] != "assistant":
        raise ValueError(f"field {field!r}: the last message must be the assistant's answer")
    return tuple(turns)


def _language(row: dict[str, Any]) -> str | None:
    value = row.get("language")
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ValueError(f"field 'language' must be a non-empty string (e.g. 'en'), got {value!r}")
    return value


def validate_rows(
    rows: list[tuple[int, Any]], name: str, config: TrainConfig, labels: list[str] | None
) -> list[Example]:
    """Every row checked; all problems (up to MAX_REPORTED_ERRORS) raised together."""
    fields, task = config.dataset.fields, config.task
    label_ids = {label: i for i, label in enumerate(labels or [])}
    examples: list[Example] = []
    errors: list[str] = []
    for number, row in rows:
        try:
            if not isinstance(row, dict):
                raise ValueError(f"expected an object, got {type(row).__name__}")
            if task.type == "sequence-classification":
                text, label = _text_field(row, fields.text), row.get(fields.label)
                if label is None:
                    raise ValueError(f"field {fields.label!r} missing")
                if str(label) not in label_ids:
                    raise ValueError(
                        f"field {fields.label!r}: unknown label {label!r} "
                        f"(task.labels: {', '.join(label_ids)})"
                    )
                examples.append(ClassificationExample(text, label_ids[str(label)], _language(row)))
            elif task.causal_format == "messages":
                examples.append(ChatExample(_messages(row, fields.messages)))
            else:
                examples.append(
                    PromptCompletionExample(
                        _text_field(row, fields.prompt), _text_field(row, fields.completion)
                    )
                )
        except ValueError as err:
            errors.append(f"{name} row {number}: {err}")
    if errors:
        more = f" (and {len(errors) - MAX_REPORTED_ERRORS} more)" if len(errors) > MAX_REPORTED_ERRORS else ""
        raise DataValidationError("; ".join(errors[:MAX_REPORTED_ERRORS]) + more)
    if not examples:
        raise DataValidationError(f"{name}: no rows")
    return examples


def infer_labels(rows: list[tuple[int, Any]], label_field: str) -> list[str]:
    """Sorted label set of the training rows, used when task.labels is omitted."""
    return sorted(
        {str(row[label_field]) for _, row in rows if isinstance(row, dict) and row.get(label_field)}
    )


# ---------------------------------------------------------------- split and digest


def split_train_validation(
    examples: list[Example], fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """Hold out round(fraction * n) (at least 1) rows chosen by a seeded shuffle: same seed, same split."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    held = max(1, round(fraction * len(examples)))
    if held >= len(examples):
        raise DataValidationError(f"{len(examples)} training rows are too few to hold out a validation split")
    held_out = set(order[:held])
    return (
        [e for i, e in enumerate(examples) if i not in held_out],
        [e for i, e in enumerate(examples) if i in held_out],
    )


def digest_bytes(chunks: list[bytes]) -> str:
    """sha256 over the sources in order, each length-prefixed so (ab, c) and (a, bc) differ."""
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(len(chunk).to_bytes(8, "big"))
        h.update(chunk)
    return f"sha256:{h.hexdigest()}"


def _read_rows(
    source: DataSource, config: TrainConfig, name: str | None = None
) -> tuple[bytes, str, list[tuple[int, Any]]]:
    raw, file_name = read_source(source, config)
    rows = parse_rows(raw, infer_format(file_name, config.dataset.format), name or file_name)
    return raw, name or file_name, rows


def load_task_data(config: TrainConfig) -> TaskData:
    """Read, parse and validate train, dataset.extra and validation; raises on the first unusable source.

    Extra sources (e.g. fresh production feedback) are validated like train rows, with their own name
    in errors ("dataset.extra[0] fresh.jsonl row 3: ..."), and appended to the training set `weight`
    times each (oversampling: a row of weight 2 is seen twice per epoch). A validation split, when no
    validation file is given, is taken from the train file only, so a repeated extra row never sits
    on both sides. Labels, when task.labels is omitted, are inferred over train and every extra.
    Rows of dataset.validationExtra (e.g. a retrain's fresh hold-out) join the validation rows, ahead of
    them, so evaluation.maxSamples never cuts the fresh rows the retrain gate is about.
    """
    spec = config.dataset
    raw_train, train_name, train_rows = _read_rows(spec.train, config)
    extras = [
        (
            source,
            *_read_rows(
                source, config, f"dataset.extra[{i}] {PurePosixPath(urlparse(source.uri).path).name}"
            ),
        )
        for i, source in enumerate(spec.extra)
    ]
    labels: list[str] = []
    if config.task.type == "sequence-classification":
        every_row = train_rows + [row for *_, rows in extras for row in rows]
        labels = list(config.task.labels or infer_labels(every_row, spec.fields.label))
        if len(labels) < 2:
            raise DataValidationError(f"{train_name}: found {len(labels)} label(s); classification needs ≥ 2")
    train = validate_rows(train_rows, train_name, config, labels)
    chunks = [raw_train]
    if spec.validation is not None:
        raw_val, val_name, val_rows = _read_rows(spec.validation, config)
        validation = validate_rows(val_rows, val_name, config, labels)
        chunks.append(raw_val)
        source = "validation file"
    else:
        train, validation = split_train_validation(train, spec.validation_split, config.training.seed)
        source = "split of train"
    held_out: list[Example] = []
    for i, more in enumerate(spec.validation_extra):
        label = f"dataset.validationExtra[{i}] {PurePosixPath(urlparse(more.uri).path).name}"
        raw, name, rows = _read_rows(more, config, label)
        held_out += validate_rows(rows, name, config, labels)
        chunks += [b"validation extra", raw]
    if held_out:
        validation, source = held_out + validation, f"{source} + {len(held_out)} validationExtra rows"
    for extra, raw, name, rows in extras:
        train += [
            example for example in validate_rows(rows, name, config, labels) for _ in range(extra.weight)
        ]
        chunks += [f"extra weight={extra.weight}".encode(), raw]  # the weight changes the training set too
    return TaskData(train, validation, labels, digest_bytes(chunks), source)
