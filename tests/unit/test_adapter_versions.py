"""Adapter versions are immutable: one folder per run, history keeps one version per URI, a pinned
version carries its digest, and rollout.requireImprovement keeps a worse run from rolling out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from kubetune_operator.adapter_history import (
    append_history,
    gate_applies,
    history_entry,
    record_skip,
    shortfall,
)
from kubetune_operator.builders.serving import ResolvedAdapter
from kubetune_operator.builders.training import build_config_map
from kubetune_trainer import artifacts
from pydantic import ValidationError
from test_serving_builders import adep

from kubetune.api.adapterdeployment_status import HISTORY_LIMIT, HistoryEntry
from kubetune.api.finetunejob import FineTuneJob
from kubetune.api.trainconfig import TrainConfig, run_output_uri
from kubetune.kubectl_plugin.errors import PluginError
from kubetune.kubectl_plugin.versions import check_promotable, rollback_target

ROOT = Path(__file__).resolve().parents[2]
FTJ = ROOT / "examples/k8s/finetunejob-support-intents.yaml"
T0 = "2026-01-01T00:00:00Z"
UID_1, UID_2 = "3f9a1c2e-0000-4000-8000-000000000001", "77aa0b3c-0000-4000-8000-000000000002"
TASK = "sequence-classification"


def finetunejob(uid: str, generation: int = 1, **spec: Any) -> FineTuneJob:
    doc = yaml.safe_load(FTJ.read_text())
    doc["metadata"].update(namespace="ml", uid=uid, generation=generation)
    doc["spec"].update(spec)
    return FineTuneJob.model_validate(doc)


def pod_config(cr: FineTuneJob) -> TrainConfig:
    """The TrainConfig exactly as a training pod reads it from the operator's ConfigMap."""
    cm = build_config_map(cr, cr.wire())
    return TrainConfig.model_validate(yaml.safe_load(cm["data"]["train-config.yaml"]))


def adapter(version: str, uri: str, accuracy: float | None, job: str = "support-intents") -> ResolvedAdapter:
    return ResolvedAdapter(version, uri, TASK, "sha256:" + "0" * 64, job, accuracy, "accuracy")


# -- one location per run -------------------------------------------------------------------------
def test_each_run_writes_its_own_folder_and_a_resumed_run_the_same_one() -> None:
    first = pod_config(finetunejob(UID_1))
    assert first.run_uri == f"pvc://kubetune-output/support-intents/support-intents/{UID_1}"
    assert artifacts.adapter_uri(first) == first.run_uri + "/adapter"
    assert artifacts.output_dir(first) == Path(
        f"/mnt/kubetune/pvc/kubetune-output/support-intents/support-intents/{UID_1}"
    )
    # The same run after a preemption (ConfigMap written again) or a suspend/resume (a new
    # generation of the same object): same folder, so its checkpoints are found again.
    assert pod_config(finetunejob(UID_1, generation=3, suspend=True)).run_uri == first.run_uri
    # A re-run is a new FineTuneJob object (the spec is immutable once started): a new folder.
    again = pod_config(finetunejob(UID_2))
    assert again.run_uri != first.run_uri and artifacts.output_dir(again) != artifacts.output_dir(first)
    assert not again.run_uri.startswith(first.run_uri) and not first.run_uri.startswith(again.run_uri)


def test_s3_runs_are_staged_and_uploaded_per_run() -> None:
    s3 = {"uri": "s3://adapters/intents", "secretRef": {"name": "s3-creds"}}
    one, two = pod_config(finetunejob(UID_1, output=s3)), pod_config(finetunejob(UID_2, output=s3))
    assert one.run_uri == f"s3://adapters/intents/support-intents/{UID_1}"
    assert artifacts.output_dir(one) != artifacts.output_dir(two)


def test_a_local_run_writes_into_output_uri_and_run_ids_cannot_climb_out() -> None:
    assert run_output_uri("pvc://out/x", "job", None) == "pvc://out/x"
    local = TrainConfig.from_spec("support-intents", finetunejob(UID_1).spec, {"kubetune-output": "/o"})
    assert local.run_uri == "pvc://kubetune-output/support-intents"
    for bad in ("../other", "a/b", "UPPER", ""):
        with pytest.raises(ValidationError, match=r"run_id|runId"):
            TrainConfig.model_validate({**local.wire(), "runId": bad})


# -- history ---------------------------------------------------------------------------------------
def test_history_never_points_two_versions_at_one_path() -> None:
    a = history_entry(adapter("si-aaaaaaaa", "pvc://o/si/1/adapter", 0.99), T0)
    b = history_entry(adapter("si-bbbbbbbb", "pvc://o/si/2/adapter", 0.98), T0)
    assert [h.uri for h in append_history(append_history([], a), b)] == [a.uri, b.uri]
    # Entries from before runs had their own folders: a new version written over an old one's path
    # makes the old record a lie, so it goes.
    legacy = history_entry(adapter("si-cccccccc", "pvc://o/si/1/adapter", 0.97), T0)
    merged = append_history([a, b], legacy)
    assert [h.version for h in merged] == ["si-bbbbbbbb", "si-cccccccc"]
    assert len({h.uri for h in merged}) == len(merged)
    # The same version again replaces its record; the list stays bounded, newest last.
    many: list[HistoryEntry] = []
    for i in range(HISTORY_LIMIT + 3):
        many = append_history(many, history_entry(adapter(f"v{i}", f"pvc://o/{i}", None), T0))
    assert len(many) == HISTORY_LIMIT and many[-1].version == f"v{HISTORY_LIMIT + 2}"


# -- rollout.requireImprovement ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("candidate", "serving", "reason"),
    [
        (0.983, 0.992, "accuracy 0.983 < serving 0.992 (si-serving)"),
        (0.992, 0.992, None),  # a tie is "not worse": it rolls out
        (0.995, 0.992, None),
        (None, 0.992, "no accuracy reported; serving 0.992 (si-serving)"),
        (0.5, None, None),  # nothing to compare with
    ],
)
def test_improvement_decision(candidate: float | None, serving: float | None, reason: str | None) -> None:
    new = adapter("si-new", "pvc://o/si/2/adapter", candidate)
    assert shortfall(new, adapter("si-serving", "pvc://o/si/1/adapter", serving)) == reason


def test_the_gate_judges_only_new_runs_of_the_referenced_job() -> None:
    serving = adapter("si-serving", "pvc://o/si/1/adapter", 0.992)
    new = adapter("si-new", "pvc://o/si/2/adapter", 0.983)
    on = {"rollout": {"requireImprovement": True}}
    assert gate_applies(adep(**on)[0], new, serving, None)
    assert not gate_applies(adep()[0], new, serving, None)  # default: false
    assert not gate_applies(adep(**on)[0], new, None, None)  # nothing serves yet
    assert not gate_applies(adep(**on)[0], serving, serving, None)
    pinned = adep(**on, adapter={"fineTuneJobRef": {"name": "support-intents"}, "version": "si-new"})[0]
    assert not gate_applies(pinned, new, serving, None)  # a person rolls forward on purpose
    retrain = adapter("r-1", "pvc://o/si/r-1/x/adapter", 0.8, job="support-intents-retrain-1")
    assert not gate_applies(adep(**on)[0], retrain, serving, "support-intents-retrain-1")


def test_a_skip_is_recorded_once_with_its_reason() -> None:
    served = append_history([], history_entry(adapter("si-serving", "pvc://o/si/1/adapter", 0.992), T0))
    new = adapter("si-new", "pvc://o/si/2/adapter", 0.983)
    history = record_skip(served, new, "accuracy 0.983 < serving 0.992 (si-serving)", T0)
    assert history is not None
    skipped = history[-1]
    assert (skipped.outcome, skipped.uri, skipped.skipped_at, skipped.deployed_at) == (
        "Skipped",
        new.uri,
        T0,
        None,
    )
    assert skipped.reason == "accuracy 0.983 < serving 0.992 (si-serving)"
    assert record_skip(history, new, "again", T0) is None


# -- kubectl kubetune rollback / promote ----------------------------------------------------------
def test_rollback_goes_to_the_last_served_version_and_promote_may_pin_a_skipped_one() -> None:
    obj = {
        "metadata": {"name": "support-intents"},
        "status": {
            "activeAdapter": {"version": "v2"},
            "history": [
                {"version": "v1", "uri": "pvc://o/1/adapter", "digest": "sha256:" + "1" * 64},
                {"version": "v2", "uri": "pvc://o/2/adapter"},
                {"version": "v3", "uri": "pvc://o/3/adapter", "outcome": "Skipped", "reason": "worse"},
            ],
        },
    }
    assert rollback_target(obj) == "v1"
    assert check_promotable(obj, "v3") == "v3"
    obj["status"]["activeAdapter"] = {"version": "v1"}
    with pytest.raises(PluginError, match="no version before v1"):
        rollback_target(obj)
