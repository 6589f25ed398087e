"""CRD admission through the real kubectl: bad manifests are rejected with the schema's message,
good examples are accepted and defaulted — by the real kube-apiserver serving crds/*.yaml."""

from __future__ import annotations

import pathlib

import pytest
import yaml
from controlplane import Cluster, HTTPError

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
# The bad corpus (tests/data/bad) meets the real API server in test_bad_corpus_real.py; here a few
# of its FineTuneJobs show the Status object and the dry run.
BAD = REPO_ROOT / "tests" / "data" / "bad"
GOOD = sorted((REPO_ROOT / "examples" / "k8s").glob("finetunejob-*.yaml"))


def test_invalid_error_is_a_real_status_object(cluster: Cluster) -> None:
    manifest = yaml.safe_load((BAD / "both-epochs-and-max-steps.yaml").read_text())

    with pytest.raises(HTTPError) as caught:
        cluster.create(manifest)

    status = caught.value.status
    assert caught.value.code == 422
    assert status["kind"] == "Status" and status["status"] == "Failure" and status["reason"] == "Invalid"
    assert status["message"] == (
        'FineTuneJob.kubetune.dev "bad-both-epochs-and-max-steps" is invalid: spec.training: '
        'Invalid value: "object": set exactly one of training.epochs and training.maxSteps'
    )
    assert status["details"]["causes"] == [
        {
            "reason": "FieldValueInvalid",
            "field": "spec.training",
            "message": 'Invalid value: "object": set exactly one of training.epochs and training.maxSteps',
        }
    ]


def test_kubectl_prints_the_invalid_object_and_cause(cluster: Cluster) -> None:
    result = cluster.kubectl("apply", "-f", str(BAD / "zero-epochs.yaml"), check=False)

    assert result.returncode == 1
    assert result.stderr == (
        'The FineTuneJob "bad-zero-epochs" is invalid: spec.training.epochs: Invalid value: 0: '
        "spec.training.epochs in body should be greater than 0\n"
    )


def test_several_causes_are_listed_one_per_line(cluster: Cluster) -> None:
    result = cluster.kubectl("apply", "-f", str(BAD / "missing-output.yaml"), check=False)

    assert result.stderr.startswith(
        'The FineTuneJob "bad-missing-output" is invalid: \n* spec.output: Required value\n'
    )


def test_type_errors_skip_cel_rules_like_the_api_server(cluster: Cluster) -> None:
    result = cluster.kubectl("apply", "-f", str(BAD / "non-string-secret-ref.yaml"), check=False)

    assert "some validation rules were not checked because the object was invalid" in result.stderr


@pytest.mark.parametrize("path", GOOD, ids=[p.stem for p in GOOD])
def test_good_example_is_accepted_and_defaulted(cluster: Cluster, path: pathlib.Path) -> None:
    result = cluster.kubectl("apply", "-f", str(path))
    name = yaml.safe_load(path.read_text())["metadata"]["name"]

    assert f"finetunejob.kubetune.dev/{name} created" in result.stdout
    spec = cluster.get("ftj", cluster.ns, name)["spec"]
    assert spec["lora"]["dropout"] == 0.05
    assert spec["backoffLimit"] == 3
    assert spec["suspend"] is False
    assert spec["dataset"]["fields"]["text"] == "text"
    assert spec["resources"]["gpuResource"] == "nvidia.com/gpu"


def test_unknown_fields_are_pruned_without_strict_validation(cluster: Cluster) -> None:
    manifest = yaml.safe_load(
        (REPO_ROOT / "examples" / "k8s" / "finetunejob-support-intents.yaml").read_text()
    )
    manifest["spec"]["lora"]["rank"] = 8  # not in the schema

    created = cluster.create(manifest)

    assert "rank" not in created["spec"]["lora"]
    assert created["spec"]["lora"]["r"] == 16


def test_kubectl_apply_dry_run_server_validates_without_storing(cluster: Cluster) -> None:
    good = cluster.kubectl("apply", "--dry-run=server", "-f", str(GOOD[0]))
    bad = cluster.kubectl("apply", "--dry-run=server", "-f", str(BAD / "zero-epochs.yaml"), check=False)

    assert "(server dry run)" in good.stdout
    assert bad.returncode != 0
    assert cluster.list("finetunejobs", cluster.ns) == []
