"""The API models: defaults, cross-field rules, URI schemes, and the committed CRDs being current."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from kubetune.api.crdgen import all_crds, render
from kubetune.api.finetunejob import FineTuneJob, FineTuneJobSpec

ROOT = Path(__file__).resolve().parents[2]
GOOD = yaml.safe_load((ROOT / "examples/k8s/finetunejob-support-intents.yaml").read_text())["spec"]


def with_(path: str, value: Any) -> dict[str, Any]:
    spec = copy.deepcopy(GOOD)
    node = spec
    *parents, leaf = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    if value is ...:
        node.pop(leaf, None)
    else:
        node[leaf] = value
    return spec


def test_committed_crds_match_the_models() -> None:
    for filename, crd in all_crds().items():
        assert (ROOT / "crds" / filename).read_text() == render(crd), (
            f"run `kubetune crds`: {filename} is stale"
        )
    check = subprocess.run(
        [sys.executable, "-m", "kubetune.cli", "crds", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr


def test_defaults_fill_in() -> None:
    spec = FineTuneJobSpec.model_validate(GOOD)
    assert spec.lora.dropout == 0.05 and spec.backoff_limit == 3 and spec.dataset.fields.text == "text"
    assert spec.resources.gpu_resource == "nvidia.com/gpu"


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("training.maxSteps", 100, "set exactly one of training.epochs and training.maxSteps"),
        ("training.epochs", ..., "set exactly one of training.epochs and training.maxSteps"),
        ("lora.r", -1, "greater than or equal to 1"),
        ("lora.targetModules", ["auto", "q_proj"], "'auto' must be the only entry"),
        ("task.type", "translation", "Input should be 'causal-lm' or 'sequence-classification'"),
        ("task.format", "messages", "task.format applies only to type causal-lm"),
        ("dataset.train.uri", "ftp://host/data.jsonl", "must be pvc://<claim>/<path>, s3://"),
        ("dataset.train.uri", "s3:/bucket/x.jsonl", "must be pvc://<claim>/<path>, s3://"),
        ("baseModel.name", "s3:/bucket/model", "must be a Hugging Face id"),
        ("output.uri", "pvc://out/../../etc", "path traversal"),
        ("output.uri", "https://example.com/x", "must be pvc://<claim>/<path> or s3://<bucket>/<prefix>"),
        ("resources.gpusPerNode", 1000, "less than or equal to 16"),
        ("baseModel.tokenSecretRef", {"name": 123, "key": True}, "Input should be a valid string"),
        ("training.packing", True, "training.packing applies only to task.type causal-lm"),
        ("evaluation.metric", "intent_exact_match", "evaluation.metric must be accuracy or macro_f1"),
        ("evaluation.minAccuracy", 1.5, "less than or equal to 1"),
        ("resources.memory", "lots", "must be a memory quantity such as 512Mi"),
        ("baseModel", ..., "Field required"),
        ("dataset.validationSplit", 0.9, "less than or equal to 0.5"),
    ],
)
def test_bad_specs_are_rejected_with_a_specific_message(path: str, value: Any, message: str) -> None:
    with pytest.raises(ValidationError) as err:
        FineTuneJobSpec.model_validate(with_(path, value))
    assert message in str(err.value)


def test_different_s3_secrets_are_rejected() -> None:
    spec = with_("output", {"uri": "s3://bkt/out", "secretRef": {"name": "a"}})
    spec["dataset"]["train"] = {"uri": "s3://bkt/train.jsonl", "secretRef": {"name": "b"}}
    with pytest.raises(ValidationError, match="use one Secret for all locations"):
        FineTuneJobSpec.model_validate(spec)


def test_crd_schema_is_structural_and_documented() -> None:
    crd = all_crds()["kubetune.dev_finetunejobs.yaml"]
    version = crd["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]

    def walk(node: dict[str, Any], where: str) -> None:
        assert "$ref" not in node and "anyOf" not in node and "title" not in node, where
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), where
        for name, child in node.get("properties", {}).items():
            if where.startswith("spec"):
                assert child.get("description"), f"{where}.{name} has no description"
            walk(child, f"{where}.{name}")
        if "items" in node:
            walk(node["items"], f"{where}[]")

    walk(schema["properties"]["spec"], "spec")
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]][:4] == [
        "Phase",
        "Progress",
        "Loss",
        "Accuracy",
    ]
    assert crd["spec"]["names"]["shortNames"] == ["ftj"]
    rules = schema["properties"]["spec"]["properties"]["training"]["x-kubernetes-validations"]
    assert rules[0]["rule"] == "has(self.epochs) != has(self.maxSteps)"


def test_whole_manifest_parses() -> None:
    doc = yaml.safe_load((ROOT / "examples/k8s/finetunejob-support-triage.yaml").read_text())
    job = FineTuneJob.model_validate(doc)
    assert job.spec.gate_metric == "intent_exact_match" and job.spec.task.causal_format == "messages"
