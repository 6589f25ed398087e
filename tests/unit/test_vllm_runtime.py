"""`spec.runtime` (issue 24): what the API refuses for engine vllm, the vLLM container the operator
renders beside the kubetune front, and the refusals found only when the FineTuneJob is resolved."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from kubetune_operator.adapter_status import (
    RUNTIME_REFUSED,
    Unresolved,
    derive_adapter_status,
    resolve_adapter,
)
from kubetune_operator.builders.serving import ResolvedAdapter, build_deployment, build_serve_config_map
from kubetune_operator.builders.vllm import model_path
from kubetune_operator.in_place_load import InPlaceLoad
from pydantic import ValidationError

from kubetune.api.adapterdeployment import AdapterDeployment
from kubetune.api.adapterdeployment_status import AdapterDeploymentStatus
from kubetune.api.runtime import owned_flag

ROOT = Path(__file__).resolve().parents[2]
TRIAGE = yaml.safe_load((ROOT / "examples/k8s/finetunejob-support-triage.yaml").read_text())


def vllm_adep(**spec: Any) -> tuple[AdapterDeployment, dict[str, Any]]:
    doc: dict[str, Any] = {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "AdapterDeployment",
        "metadata": {"name": "triage", "namespace": "ml", "uid": "u-1", "generation": 1},
        "spec": {
            "baseModel": {"name": "pvc://models/smollm2"},
            "task": "causal-lm",
            "adapter": {"fineTuneJobRef": {"name": "support-triage"}},
            "resources": {"gpus": 1},
            "runtime": {"engine": "vllm"},
            **spec,
        },
    }
    return AdapterDeployment.model_validate(doc), doc


def triage_job(r: int = 16, recipe: str = "lora") -> dict[str, Any]:
    doc = yaml.safe_load(yaml.safe_dump(TRIAGE))
    doc["spec"]["lora"]["r"] = r
    doc["spec"]["training"]["recipe"] = recipe
    doc["status"] = {"phase": "Succeeded", "result": {"adapterUri": "pvc://out/triage/a", "digest": None}}
    return doc


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"task": "sequence-classification"}, "vLLM serves no LoRA sequence classifiers"),
        ({"resources": {"gpus": 0}}, "runtime.engine vllm needs a GPU"),
        ({"runtime": {"engine": "vllm", "args": ["--max_loras=9"]}}, "runtime.args must not set"),
        ({"runtime": {"engine": "vllm", "maxLoraRank": 12}}, "maxLoraRank must be one of vLLM's ranks"),
        ({"runtime": {"engine": "vllm", "maxLoras": 1}}, "greater than or equal to 2"),
    ],
)
def test_engine_vllm_refuses_what_vllm_cannot_do(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        vllm_adep(**spec)


def test_owned_flags_in_every_spelling() -> None:
    assert [owned_flag(a) for a in ("--port", "--port=1", "--enable_lora", "--max-lora-rank 8")] == [
        "--port",
        "--port",
        "--enable-lora",
        "--max-lora-rank",
    ]
    assert owned_flag("--portal") is None and owned_flag("--enforce-eager") is None


def test_the_pod_holds_vllm_and_the_kubetune_front() -> None:
    ad, owner = vllm_adep(
        runtime={"engine": "vllm", "maxLoras": 3, "maxLoraRank": 32, "args": ["--enforce-eager"]}
    )
    resolved = resolve_adapter(ad, triage_job(), [])
    assert not isinstance(resolved, Unresolved)
    cm = build_serve_config_map(ad, owner, resolved)
    dep = build_deployment(ad, owner, resolved, cm, "kubetune:dev", "IfNotPresent", "kubetune-server")
    vllm, front = dep["spec"]["template"]["spec"]["containers"]
    assert vllm["args"][:2] == ["serve", "/mnt/kubetune/pvc/models/smollm2"]
    assert vllm["args"][-5:] == ["--max-loras", "3", "--max-lora-rank", "32", "--enforce-eager"]
    assert vllm["resources"]["limits"] == {"nvidia.com/gpu": 1}
    assert front["resources"] == {"requests": {"cpu": "500m", "memory": "1Gi"}}  # the GPU is vLLM's
    vllm_mounts = {m["mountPath"]: m for m in vllm["volumeMounts"]}
    for mount in front["volumeMounts"]:
        if mount["name"].startswith("pvc-"):  # the same paths, so the front's lora_path resolves in vLLM
            assert vllm_mounts[mount["mountPath"]]["readOnly"] is True
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}} in (
        dep["spec"]["template"]["spec"]["volumes"]
    )
    config = yaml.safe_load(cm["data"]["serve-config.yaml"])
    assert config["engine"]["url"] == "http://127.0.0.1:8001"


def test_engine_kubetune_renders_one_container_as_before() -> None:
    ad, owner = vllm_adep(runtime={"engine": "kubetune"}, resources={"gpus": 1})
    resolved = resolve_adapter(ad, triage_job(), [])
    assert not isinstance(resolved, Unresolved)
    cm = build_serve_config_map(ad, owner, resolved)
    dep = build_deployment(ad, owner, resolved, cm, "kubetune:dev", "IfNotPresent", "kubetune-server")
    (server,) = dep["spec"]["template"]["spec"]["containers"]
    assert server["resources"]["limits"] == {"nvidia.com/gpu": 1}
    assert "engine" not in yaml.safe_load(cm["data"]["serve-config.yaml"])


@pytest.mark.parametrize(
    ("job", "message"),
    [
        (triage_job(r=64), "LoRA rank 64, above runtime.maxLoraRank 16"),
        (triage_job(recipe="heads"), "training.recipe heads"),
    ],
)
def test_what_vllm_cannot_load_is_refused_when_the_job_resolves(job: dict[str, Any], message: str) -> None:
    ad, _ = vllm_adep()
    refused = resolve_adapter(ad, job, [])
    assert isinstance(refused, Unresolved) and refused.reason == RUNTIME_REFUSED
    assert message in refused.message


def test_model_path_maps_a_pvc_base_to_its_mount() -> None:
    assert model_path("pvc://models/llama") == "/mnt/kubetune/pvc/models/llama"
    assert model_path("meta-llama/Llama-3.1-8B-Instruct") == "meta-llama/Llama-3.1-8B-Instruct"


def test_an_s3_adapter_reaches_vllm_through_the_shared_cache_volume() -> None:
    """The front copies an s3:// adapter into its cacheDir (serve.adapters.adapter_folder) and sends
    vLLM that path: both containers mount the same emptyDir there, the front writable."""
    ad, owner = vllm_adep()
    job = triage_job()
    job["status"]["result"]["adapterUri"] = "s3://models/triage/u-1/adapter"
    resolved = resolve_adapter(ad, job, [])
    assert not isinstance(resolved, Unresolved)
    cm = build_serve_config_map(ad, owner, resolved)
    dep = build_deployment(ad, owner, resolved, cm, "kubetune:dev", "IfNotPresent", "kubetune-server")
    vllm, front = dep["spec"]["template"]["spec"]["containers"]
    config = yaml.safe_load(cm["data"]["serve-config.yaml"])
    assert config["adapters"][0]["uri"] == "s3://models/triage/u-1/adapter"
    cache = config["cacheDir"]
    (front_cache,) = (m for m in front["volumeMounts"] if m["mountPath"] == cache)
    (vllm_cache,) = (m for m in vllm["volumeMounts"] if m["mountPath"] == cache)
    assert front_cache["name"] == vllm_cache["name"] and not front_cache.get("readOnly")
    (volume,) = (v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == front_cache["name"])
    assert "emptyDir" in volume


V1 = ResolvedAdapter("support-triage-aaaaaaaa", "pvc://out/triage/a", "causal-lm", "sha256:" + "aa" * 32)
V2 = ResolvedAdapter("support-triage-bbbbbbbb", "pvc://out/triage/b", "causal-lm", "sha256:" + "bb" * 32)


def rendered(
    ad: AdapterDeployment, owner: dict[str, Any], adapter: ResolvedAdapter, track: Any = "stable"
) -> tuple[str, dict[str, Any]]:
    cm = build_serve_config_map(ad, owner, adapter, track)
    dep = build_deployment(ad, owner, adapter, cm, "kubetune:dev", "IfNotPresent", "sa", track=track)
    return cm["data"]["serve-config.yaml"], dep["spec"]["template"]


def test_a_new_version_reaches_vllm_pods_through_the_config_map_not_their_template() -> None:
    ad, owner = vllm_adep()
    config1, template1 = rendered(ad, owner, V1)
    config2, template2 = rendered(ad, owner, V2)
    assert config1 != config2 and V2.uri.removeprefix("pvc://out") in config2
    assert template1 == template2  # no restart: the kubetune container loads it into the running vLLM
    assert "kubetune.dev/adapter-version" not in template1["metadata"]["annotations"]
    # What needs a restart still rolls: a ServeConfig setting, the engine's flags, a version on
    # another PVC (the pod's volumes), and the canary track, which starts with its candidate.
    longer, _ = vllm_adep(serving={"maxNewTokens": 99})
    assert rendered(longer, owner, V1)[1] != template1
    eager, _ = vllm_adep(runtime={"engine": "vllm", "args": ["--enforce-eager"]})
    assert rendered(eager, owner, V1)[1] != template1
    elsewhere = ResolvedAdapter(V2.version, "pvc://other/triage/b", "causal-lm", V2.digest)
    assert rendered(ad, owner, elsewhere)[1] != template1
    assert rendered(ad, owner, V1, "canary")[1] != rendered(ad, owner, V2, "canary")[1]
    kubetune, _ = vllm_adep(runtime={"engine": "kubetune"})
    assert rendered(kubetune, owner, V1)[1] != rendered(kubetune, owner, V2)[1]


def test_a_version_loaded_in_place_is_available_once_every_ready_pod_reports_it() -> None:
    ad, _ = vllm_adep(replicas=2)
    status = {"observedGeneration": 1, "replicas": 2, "readyReplicas": 2, "updatedReplicas": 2}
    status["conditions"] = [{"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}]
    deployment = {"metadata": {"generation": 1}, "spec": {"template": {"metadata": {}}}, "status": status}
    prev = AdapterDeploymentStatus.model_validate(
        {"phase": "Available", "activeAdapter": {"version": V1.version, "uri": V1.uri}}
    )
    now = "2026-12-07T10:00:00Z"
    loading, events = derive_adapter_status(ad, V2, deployment, prev, now, serving=InPlaceLoad(1))
    assert loading.phase == "Progressing" and loading.active_adapter == prev.active_adapter
    assert loading.message == f"loading {V2.version} in place (pods keep running): 1/2 ready pods serve it"
    progressing = next(c for c in loading.conditions if c.type == "Progressing")
    assert progressing.reason == "LoadingInPlace" and progressing.status == "True"
    served, events = derive_adapter_status(ad, V2, deployment, loading, now, serving=InPlaceLoad(2))
    assert served.phase == "Available" and served.active_adapter is not None
    assert served.active_adapter.version == V2.version
    assert any(e.reason == "RolledOut" and V2.version in e.message for e in events)


def at(seconds: int) -> str:
    return f"2026-12-07T10:{seconds // 60:02d}:{seconds % 60:02d}Z"


def ready_deployment(**spec: Any) -> dict[str, Any]:
    """Both stable pods ready on the current template (a version loaded in place rolls none)."""
    status = {"observedGeneration": 1, "replicas": 2, "readyReplicas": 2, "updatedReplicas": 2}
    status["conditions"] = [{"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}]
    return {"metadata": {"generation": 1}, "spec": {"template": {"metadata": {}}, **spec}, "status": status}


def progressing_of(status: AdapterDeploymentStatus) -> Any:
    return next(c for c in status.conditions if c.type == "Progressing")


REFUSED = (
    "pod triage-0: load triage@support-triage-bbbbbbbb: engine answered HTTP 400: rank 64 > max_lora_rank"
)


def test_an_in_place_load_past_the_progress_deadline_is_degraded_once_and_says_why() -> None:
    ad, _ = vllm_adep(replicas=2)
    deployment = ready_deployment(progressDeadlineSeconds=600)
    prev = AdapterDeploymentStatus.model_validate(
        {"phase": "Available", "activeAdapter": {"version": V1.version, "uri": V1.uri}}
    )
    stuck = InPlaceLoad(1, (REFUSED,))
    loading, _ = derive_adapter_status(ad, V2, deployment, prev, at(0), serving=stuck)
    waiting, events = derive_adapter_status(ad, V2, deployment, loading, at(599), serving=stuck)
    assert waiting.phase == "Progressing" and events == []
    assert progressing_of(waiting).last_transition_time == at(0)
    assert "HTTP 400" not in (waiting.message or "")  # a load may still retry and pass: no verdict yet
    stalled, events = derive_adapter_status(ad, V2, deployment, waiting, at(600), serving=stuck)
    assert stalled.phase == "Degraded" and stalled.active_adapter == prev.active_adapter
    assert stalled.message == (
        f"loading {V2.version} in place stalled: 1/2 ready pods serve it after 600s "
        f"(progressDeadlineSeconds); they keep serving {V1.version}; the load failed: {REFUSED}"
    )
    progressing = progressing_of(stalled)
    assert (progressing.status, progressing.reason) == ("False", "InPlaceLoadStalled")
    ready = next(c for c in stalled.conditions if c.type == "Ready")
    assert ready.status == "False"
    assert [(e.type, e.reason) for e in events] == [("Warning", "InPlaceLoadStalled")]
    assert events[0].message == stalled.message
    # Stays Degraded, without another event, while the pods keep failing; no pod quoted: it says so.
    later, events = derive_adapter_status(ad, V2, deployment, stalled, at(3000), serving=InPlaceLoad(1))
    assert later.phase == "Degraded" and events == []
    assert progressing_of(later).reason == "InPlaceLoadStalled" and "no pod logged a load" in later.message
    # The engine gets it loaded at last (a retry): Available on the new version.
    served, events = derive_adapter_status(ad, V2, deployment, later, at(3060), serving=InPlaceLoad(2))
    assert served.phase == "Available" and served.active_adapter is not None
    assert served.active_adapter.version == V2.version
    assert any(e.reason == "RolledOut" for e in events)


V3 = ResolvedAdapter("support-triage-cccccccc", "pvc://out/triage/c", "causal-lm", "sha256:" + "cc" * 32)


def test_each_version_loaded_in_place_gets_the_whole_deadline() -> None:
    ad, _ = vllm_adep(replicas=2)
    deployment = ready_deployment()  # none rendered: the builders' 1200 s
    assert "progressDeadlineSeconds" not in deployment["spec"]
    prev = AdapterDeploymentStatus.model_validate(
        {"phase": "Available", "activeAdapter": {"version": V1.version, "uri": V1.uri}}
    )
    none = InPlaceLoad(0)
    loading, _ = derive_adapter_status(ad, V2, deployment, prev, at(0), serving=none)
    # V3 replaces V2 before V2's deadline: its clock starts when it became the target.
    switched, _ = derive_adapter_status(ad, V3, deployment, loading, at(1000), serving=none)
    assert progressing_of(switched).last_transition_time == at(1000)
    still, _ = derive_adapter_status(ad, V3, deployment, switched, at(2199), serving=none)
    assert still.phase == "Progressing" and V3.version in (still.message or "")
    stalled, _ = derive_adapter_status(ad, V3, deployment, still, at(2200), serving=none)
    assert stalled.phase == "Degraded" and "after 1200s" in (stalled.message or "")
    assert "they keep serving " + V1.version in (stalled.message or "")
    # Another version while V3 is stalled: loading afresh, not stalled from the start.
    fresh, events = derive_adapter_status(ad, V2, deployment, stalled, at(2300), serving=none)
    assert fresh.phase == "Progressing" and progressing_of(fresh).last_transition_time == at(2300)
    assert [e.reason for e in events] == ["Progressing"]
    # A restart-requiring rollout that turns into an in-place load starts the clock then too.
    rolling = AdapterDeploymentStatus.model_validate(
        {
            "phase": "Progressing",
            "conditions": [
                {
                    "type": "Progressing",
                    "status": "True",
                    "reason": "RollingOut",
                    "message": f"rolling out {V2.version}: 1/2 updated, 1 ready",
                    "lastTransitionTime": at(0),
                }
            ],
        }
    )
    after_rollout, _ = derive_adapter_status(ad, V2, deployment, rolling, at(1500), serving=none)
    assert after_rollout.phase == "Progressing"
    assert progressing_of(after_rollout).last_transition_time == at(1500)
