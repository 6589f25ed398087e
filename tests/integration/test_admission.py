"""CRD admission through the real kubectl: bad manifests are rejected with the schema's message,
good examples are accepted and defaulted — by the real kube-apiserver serving crds/*.yaml."""

from __future__ import annotations

import pathlib

import pytest
import yaml
from controlplane import Cluster, HTTPError

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
BAD = sorted((REPO_ROOT / "examples" / "bad").glob("*.yaml"))
GOOD = sorted((REPO_ROOT / "examples").glob("finetunejob-*.yaml"))


def expected_messages(path: pathlib.Path) -> list[str]:
    """The ``# expect: <text>`` lines of a bad manifest: each must appear in kubectl's error."""
    return [
        line.removeprefix("# expect: ")
        for line in path.read_text().splitlines()
        if line.startswith("# expect: ")
    ]


def test_enough_bad_manifests_each_with_an_expectation() -> None:
    assert len(BAD) >= 16
    assert all(expected_messages(path) for path in BAD), "every bad manifest names its expected message"


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_manifest_is_rejected_with_its_message(cluster: Cluster, path: pathlib.Path) -> None:
    result = cluster.kubectl("apply", "-f", str(path), check=False)

    assert result.returncode != 0, result.stdout
    for message in expected_messages(path):
        assert message in result.stderr
    name = yaml.safe_load(path.read_text())["metadata"]["name"]
    assert cluster.get("finetunejobs", cluster.ns, name) is None


def test_invalid_error_is_a_real_status_object(cluster: Cluster) -> None:
    manifest = yaml.safe_load((REPO_ROOT / "examples" / "bad" / "both-epochs-and-max-steps.yaml").read_text())

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
    result = cluster.kubectl("apply", "-f", str(REPO_ROOT / "examples/bad/zero-epochs.yaml"), check=False)

    assert result.returncode == 1
    assert result.stderr == (
        'The FineTuneJob "bad-zero-epochs" is invalid: spec.training.epochs: Invalid value: 0: '
        "spec.training.epochs in body should be greater than 0\n"
    )


def test_several_causes_are_listed_one_per_line(cluster: Cluster) -> None:
    result = cluster.kubectl("apply", "-f", str(REPO_ROOT / "examples/bad/missing-output.yaml"), check=False)

    assert result.stderr.startswith(
        'The FineTuneJob "bad-missing-output" is invalid: \n* spec.output: Required value\n'
    )


def test_type_errors_skip_cel_rules_like_the_api_server(cluster: Cluster) -> None:
    result = cluster.kubectl(
        "apply", "-f", str(REPO_ROOT / "examples/bad/non-string-secret-ref.yaml"), check=False
    )

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
    manifest = yaml.safe_load((REPO_ROOT / "examples" / "finetunejob-support-intents.yaml").read_text())
    manifest["spec"]["lora"]["rank"] = 8  # not in the schema

    created = cluster.create(manifest)

    assert "rank" not in created["spec"]["lora"]
    assert created["spec"]["lora"]["r"] == 16


def test_kubectl_apply_dry_run_server_validates_without_storing(cluster: Cluster) -> None:
    good = cluster.kubectl("apply", "--dry-run=server", "-f", str(GOOD[0]))
    bad = cluster.kubectl("apply", "--dry-run=server", "-f", str(BAD[0]), check=False)

    assert "(server dry run)" in good.stdout
    assert bad.returncode != 0
    assert cluster.list("finetunejobs", cluster.ns) == []
