"""The pure parts of kubetune fronting an engine (issue 24): reading the engine's model list, the
bare-name aliases, engine error bodies, and the drift window computed without the model."""

from __future__ import annotations

from kubetune_trainer.serve.config import AdapterSpec
from kubetune_trainer.serve.drift import Reference
from kubetune_trainer.serve.engine_client import parse_models
from kubetune_trainer.serve.engine_drift import LengthLabelWindow, answer_label
from kubetune_trainer.serve.engine_routes import engine_error_fields
from kubetune_trainer.serve.engine_sync import aliases, desired_set

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
            {"id": "/models/llama", "root": "/models/llama", "parent": None},
            {"id": "triage@v1", "root": "/mnt/a", "parent": "/models/llama"},
        ],
    }
    assert parse_models(vllm).base == "/models/llama"
    assert parse_models(vllm).loras == {"triage@v1"}
    assert parse_models({"data": []}).base is None


def test_the_alias_follows_the_version_listed_last() -> None:
    specs = [AdapterSpec(name="t", version=v, uri=f"/a/{v}") for v in ("v1", "v2")]
    specs.append(AdapterSpec(name="u", version="x", uri="/b"))
    assert aliases(specs) == {"t": "t@v2", "u": "u@x"}
    assert list(desired_set(specs)) == ["t@v1", "t@v2", "u@x"]


def test_engine_errors_of_both_shapes() -> None:
    openai = b'{"error": {"message": "bad", "type": "BadRequestError", "param": "model", "code": 400}}'
    assert engine_error_fields(openai) == ("bad", "BadRequestError", "400", "model")
    assert engine_error_fields(b"Internal Server Error")[:2] == ("Internal Server Error", "server_error")


def test_window_scores_lengths_and_closed_set_labels_and_slides() -> None:
    window = LengthLabelWindow(REFERENCE, size=4)
    for _ in range(2):
        window.add(5, answer_label('{"intent": "billing"}'))
        window.add(15, answer_label('{"intent": "login"}'))
    assert window.scores() == {"length_psi": 0.0, "label_psi": 0.0}  # same shares as the reference
    for _ in range(4):  # the window slides: only long prompts and free text remain
        window.add(15, answer_label("sure, here you go"))
    scores = window.scores()
    assert scores["length_psi"] > 1 and "label_psi" not in scores
    assert len(window.lengths) == 4 and window.label_counts.sum() == 0
