"""Read a FineTuneJob manifest or a TrainConfig file into a validated TrainConfig."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kubetune.api.finetunejob import FineTuneJob
from kubetune.api.trainconfig import TrainConfig


class ConfigError(ValueError):
    """A config file or flag a user must fix; the message says what and where."""


def format_validation_error(err: ValidationError, prefix: str = "") -> str:
    """One line per problem: 'spec.lora.r: Input should be greater than or equal to 1'."""
    lines = []
    for item in err.errors():
        where = ".".join(str(p) for p in item["loc"])
        lines.append(f"{prefix}{where}: {item['msg']}" if where else f"{prefix}{item['msg']}")
    return "; ".join(lines)


def parse_mounts(pairs: list[str], flag: str) -> dict[str, str]:
    mounts = {}
    for pair in pairs:
        name, sep, directory = pair.partition("=")
        if not sep or not name or not directory:
            raise ConfigError(f"{flag} {pair!r}: expected NAME=DIR")
        mounts[name] = str(Path(directory).resolve())
    return mounts


def train_config_from_document(
    doc: dict[str, Any],
    pvc_mounts: dict[str, str],
    configmap_mounts: dict[str, str],
    cache_dir: str | None = None,
) -> TrainConfig:
    """A FineTuneJob manifest (kind: FineTuneJob) or a bare TrainConfig mapping -> TrainConfig."""
    try:
        if doc.get("kind") == "FineTuneJob":
            job = FineTuneJob.model_validate(doc)
            return TrainConfig.from_spec(
                job.metadata.name or "finetunejob", job.spec, pvc_mounts, configmap_mounts, cache_dir
            )
        config = TrainConfig.model_validate(doc)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from None
    update: dict[str, Any] = {}
    if pvc_mounts:
        update["pvc_mounts"] = {**config.pvc_mounts, **pvc_mounts}
    if configmap_mounts:
        update["configmap_mounts"] = {**config.configmap_mounts, **configmap_mounts}
    if cache_dir:
        update["cache_dir"] = cache_dir
    return config.model_copy(update=update)


def load_train_config(
    path: Path,
    pvc_mounts: dict[str, str],
    configmap_mounts: dict[str, str],
    cache_dir: str | None = None,
) -> TrainConfig:
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: {err}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping (a FineTuneJob manifest or a TrainConfig)")
    return train_config_from_document(doc, pvc_mounts, configmap_mounts, cache_dir)
