"""The pure parts of kubetune fronting an engine (issue 24): reading the engine's model list, the
bare-name aliases, engine error bodies, and the drift window computed without the model."""

from __future__ import annotations

from kubetune_trainer.serve.config import AdapterSpec
from kubetune_trainer.serve.drift import Reference
from kubetune_trainer.serve.engine_client import parse_models
from kubetune_trainer.serve.engine_drift import LengthLabelWindow, answer_label
from kubetune_trainer.serve.engine_routes import engine_error_fields
from kubetune_trainer.serve.engine_sync import aliases, desired_set
from kubetune_trainer.serve.served_report import ERROR_CHARS, last_report, last_served, serving_line

REFERENCE = Reference.from_stats(
    {
        "predictionDistribution": {"billing": 0.5, "login": 0.5},
        "confidenceHistogram": {"edges": [0.0, 0.5, 1.0], "counts": [1, 1]},
        "inputLengthHistogram": {"edges": [0.0, 10.0, 20.0], "counts": [5, 5]},
    }
)


def test_vllm_model_list_gives_the_base_and_loaded_loras() -> None:
    vllm = {
        "object": "list",
        "data": [
            {"id": "/models/llama", "root": "/models/llama", "parent": None, "owned_by": "vllm"},
            {"id": "triage@v1", "root": "/mnt/a", "parent": "/models/llama", "owned_by": "vllm"},
        ],
    }
    assert parse_models(vllm).base == "/models/llama"
    assert parse_models(vllm).loras == {"triage@v1"}
    assert parse_models(vllm).owner == "vllm"  # kubetune_runtime_info's engine label
    assert parse_models({"data": []}).base is None


def test_the_alias_follows_the_version_listed_last() -> None:
    specs = [AdapterSpec(name="t", version=v, uri=f"/a/{v}") for v in ("v1", "v2")]
    specs.append(AdapterSpec(name="u", version="x", uri="/b"))
    assert aliases(specs) == {"t": "t@v2", "u": "u@x"}
    assert list(desired_set(specs)) == ["t@v1", "t@v2", "u@x"]


def test_the_newest_serving_line_of_a_pod_log_says_what_it_serves() -> None:
    log = "\n".join(
        [
            "2026-12-07 10:00:00 INFO kubetune.serve: " + serving_line({"t": "t@v1"}),
            "2026-12-07 10:01:00 WARNING kubetune.serve: engine sync: engine lacks ['t@v2']",
            "2026-12-07 10:02:00 INFO kubetune.serve: " + serving_line({"t": "t@v2", "u": "u@x"}),
            "2026-12-07 10:03:00 INFO kubetune.serve: engine sync: unloading t@v1",
        ]
    )
    assert last_served(log) == {"t": "t@v2", "u": "u@x"}
    assert last_served(log.rsplit("\n", 2)[0]) == {"t": "t@v1"}
    assert last_served("INFO kubetune.serve: ready") is None
    assert last_served("x " + serving_line({"t": "t@v1"})[:-3]) is None  # cut off: nothing claimed


def test_a_load_failure_reaches_the_serving_line_clipped_and_without_url_secrets() -> None:
    why = "load t@v2 from s3://b/t?X-Amz-Signature=deadbeef: https://u:hunter2@h/x said\n" + "no! " * 200
    line = serving_line({"t": "t@v1"}, {"t@v2": why})
    report = last_report("2026-12-07 10:00:00 INFO kubetune.serve: " + line)
    assert report is not None and report.aliases == {"t": "t@v1"}
    (reason,) = report.failed.values()
    assert (
        reason.startswith("load t@v2 from s3://b/t https://h/x said no! no!") and len(reason) == ERROR_CHARS
    )
    assert "deadbeef" not in line and "hunter2" not in line and "\n" not in reason
    # The operator reads a log anyone in the pod can write to: it clips again.
    forged = 'kubetune-serving {"aliases":{"t":"t@v1"},"failed":{"t@v2":"' + "x" * 10_000 + '"}}'
    assert len(last_report(forged).failed["t@v2"]) == ERROR_CHARS  # type: ignore[union-attr]
    assert last_report('kubetune-serving {"aliases":{},"failed":["t@v2"]}') is None


def test_engine_errors_of_both_shapes() -> None:
    openai = b'{"error": {"message": "bad", "type": "BadRequestError", "param": "model", "code": 400}}'
    assert engine_error_fields(openai) == ("bad", "BadRequestError", "400", "model")
    assert engine_error_fields(b"Internal Server Error")[:2] == ("Internal Server Error", "server_error")


def test_window_scores_lengths_and_closed_set_labels_and_slides() -> None:
    window = LengthLabelWindow(REFERENCE, size=4)
    for _ in range(2):
        window.add_request(5, answer_label('{"intent": "billing"}'))
        window.add_request(15, answer_label('{"intent": "login"}'))
    assert window.scores() == {"length_psi": 0.0, "label_psi": 0.0}  # same shares as the reference
    for _ in range(4):  # the window slides: only long prompts and free text remain
        window.add_request(15, answer_label("sure, here you go"))
    scores = window.scores()
    assert scores["length_psi"] > 1 and "label_psi" not in scores
    assert len(window.lengths) == 4 and window.label_counts.sum() == 0
