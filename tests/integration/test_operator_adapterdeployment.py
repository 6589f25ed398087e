"""From a Succeeded FineTuneJob to a serving Deployment, rollout, new adapter and rollback — the real
operator against the real control plane. The real Job controller finishes the FineTuneJob's Jobs, the
real Deployment and ReplicaSet controllers make the serving pods, kwok runs them; the test plays only
the kubelet (how pods end, whether their readiness probe passes)."""

from __future__ import annotations

import json
from typing import Any

import yaml
from adep_helpers import (
    ADEP,
    STABLE,
    active_version,
    deployment,
    ready_pods,
    reasons,
    succeeded_finetunejob,
    template_version,
    wait_adep,
    wait_deployment,
    wait_template_version,
)
from controlplane import Cluster
from ftj_helpers import ROOT, TIMEOUT, apply, bind_claims
from operator_process import SERVER_IMAGE, Operator

EXAMPLE = ROOT / "examples/k8s/adapterdeployment-support-intents.yaml"
DIGEST_A, DIGEST_B = "sha256:" + "aa" * 32, "sha256:" + "bb" * 32
VERSION_A, VERSION_B = "support-intents-aaaaaaaa", "support-intents-bbbbbbbb"


def test_adapterdeployment_serves_the_finetunejob_adapter(cluster: Cluster, operator: Operator) -> None:
    bind_claims(cluster)
    cluster.kubectl("apply", "-f", str(EXAMPLE))
    pending = wait_adep(cluster, operator, lambda s: s.get("phase") == "Pending", "Pending without adapter")
    assert "support-intents" in pending["message"]
    assert cluster.get("deployments.apps", cluster.ns, STABLE) is None

    succeeded_finetunejob(cluster, DIGEST_A)
    uri_a = run_uri(cluster)
    dep = wait_deployment(cluster)
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == SERVER_IMAGE
    assert container["args"] == ["serve", "-f", "/etc/kubetune/serve-config.yaml"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["readinessProbe"]["httpGet"]["port"] == "http"
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    config_map = cluster.get("configmaps", cluster.ns, "support-intents-serve-config")
    assert config_map is not None
    config = yaml.safe_load(config_map["data"]["serve-config.yaml"])
    assert config["adapters"] == [{"name": ADEP, "version": VERSION_A, "uri": uri_a, "digest": DIGEST_A}]
    service = cluster.get("services", cluster.ns, ADEP)
    assert service is not None
    # The Service selects both tracks (stable + canary); the Deployment only its own.
    assert service["spec"]["selector"].items() <= dep["spec"]["selector"]["matchLabels"].items()
    assert dep["spec"]["selector"]["matchLabels"]["kubetune.dev/track"] == "stable"
    assert cluster.get("poddisruptionbudgets.policy", cluster.ns, STABLE) is not None
    # The real controllers made the pods; their readiness probe has not passed yet.
    wait_adep(cluster, operator, lambda s: s.get("phase") == "Progressing", "Progressing")

    pods = ready_pods(cluster)
    assert all(p["spec"]["nodeName"].startswith("kwok-cpu-") for p in pods), [
        p["spec"]["nodeName"] for p in pods
    ]
    live = wait_adep(cluster, operator, lambda s: s.get("phase") == "Available", "Available")
    assert live["activeAdapter"]["version"] == VERSION_A
    assert live["activeAdapter"]["digest"] == DIGEST_A and live["activeAdapter"]["accuracy"] == 0.9583
    assert live["readyReplicas"] == 2

    # A new successful run of the job rolls out a new version; the old one serves meanwhile
    # (maxUnavailable 0: the real controller keeps both old pods until a new one is ready).
    succeeded_finetunejob(cluster, DIGEST_B)
    uri_b = run_uri(cluster)
    assert uri_b != uri_a  # a re-run never writes over the adapter that serves
    wait_template_version(cluster, VERSION_B)
    rolling = wait_adep(cluster, operator, lambda s: s.get("phase") == "Progressing", "rolling out B")
    assert active_version(rolling) == VERSION_A and VERSION_B in rolling["message"]
    assert deployment(cluster).get("status", {}).get("availableReplicas", 0) >= 2
    ready_pods(cluster)
    live = wait_adep(
        cluster,
        operator,
        lambda s: active_version(s) == VERSION_B and s.get("phase") == "Available",
        "B active",
    )
    assert [(h["version"], h["uri"], h["digest"]) for h in live["history"]] == [
        (VERSION_A, uri_a, DIGEST_A),
        (VERSION_B, uri_b, DIGEST_B),
    ]
    # The real Deployment controller scaled the old ReplicaSet down and deleted its pods.
    cluster.wait_for(
        lambda: len(cluster.list("pods", cluster.ns, label_selector="kubetune.dev/track=stable")) == 2,
        timeout=TIMEOUT,
        message="old pods gone",
    )

    # Roll back by pinning the previous version.
    pin_version(cluster, VERSION_A)
    wait_template_version(cluster, VERSION_A)
    ready_pods(cluster)
    live = wait_adep(
        cluster,
        operator,
        lambda s: active_version(s) == VERSION_A and s.get("phase") == "Available",
        "rollback active",
    )
    assert live["activeAdapter"]["digest"] == DIGEST_A and live["activeAdapter"]["uri"] == uri_a
    assert serve_config(cluster)["adapters"][0] == {
        "name": ADEP,
        "version": VERSION_A,
        "uri": uri_a,
        "digest": DIGEST_A,
    }

    # A pod's readiness probe starts failing after the rollout: Degraded, with a Warning event.
    cluster.wait_for(
        lambda: (
            (d := deployment(cluster)).get("status", {}).get("replicas") == 2
            and d["status"].get("updatedReplicas") == 2
        ),
        timeout=TIMEOUT,
        message="rollback finished",
    )
    (first, _) = ready_pods(cluster)
    cluster.set_pod_ready(cluster.ns, first["metadata"]["name"], ready=False)
    degraded = wait_adep(cluster, operator, lambda s: s.get("phase") == "Degraded", "Degraded")
    assert "1/2" in degraded["message"]
    assert template_version(deployment(cluster)) == VERSION_A
    cluster.wait_for(
        lambda: any(e["type"] == "Warning" for e in cluster.events(cluster.ns, ADEP)),
        timeout=TIMEOUT,
        message="a Warning event",
    )
    table = cluster.kubectl("get", "adep").stdout
    assert VERSION_A in table and "Degraded" in table, table
    assert {"RolledOut", "ReplicasUnavailable"} <= reasons(cluster)  # the condition's reason, not the phase


def pin_version(cluster: Cluster, version: str) -> None:
    """What a person (or `kubectl kubetune rollback|promote`) does: pin spec.adapter.version."""
    patch = {"spec": {"adapter": {"version": version}}}
    cluster.kubectl("patch", "adep", ADEP, "--type=merge", "-p", json.dumps(patch))


def run_uri(cluster: Cluster) -> str:
    """The adapter URI of the FineTuneJob's current run, which its folder names (a run is a uid)."""
    job = cluster.get("ftj", cluster.ns, "support-intents")
    assert job is not None
    uri = str(job["status"]["result"]["adapterUri"])
    assert uri == f"pvc://kubetune-output/support-intents/support-intents/{job['metadata']['uid']}/adapter"
    return uri


def serve_config(cluster: Cluster) -> dict[str, Any]:
    config_map = cluster.get("configmaps", cluster.ns, "support-intents-serve-config")
    assert config_map is not None
    return dict(yaml.safe_load(config_map["data"]["serve-config.yaml"]))


def test_a_worse_run_is_not_rolled_out_with_require_improvement(cluster: Cluster, operator: Operator) -> None:
    bind_claims(cluster)
    succeeded_finetunejob(cluster, DIGEST_A, accuracy=0.992)
    apply(cluster, EXAMPLE, rollout={"strategy": "Rolling", "requireImprovement": True})
    wait_deployment(cluster)
    ready_pods(cluster)
    wait_adep(cluster, operator, lambda s: active_version(s) == VERSION_A, "A serving")

    # A re-run scores lower: recorded as Skipped with its own URI, an event says why, A keeps serving.
    succeeded_finetunejob(cluster, DIGEST_B, accuracy=0.983)
    uri_b = run_uri(cluster)
    skipped = wait_adep(
        cluster,
        operator,
        lambda s: any(h.get("outcome") == "Skipped" for h in s.get("history", [])),
        "B recorded as skipped",
    )
    (entry,) = [h for h in skipped["history"] if h.get("outcome") == "Skipped"]
    assert (entry["version"], entry["uri"], entry["digest"]) == (VERSION_B, uri_b, DIGEST_B)
    assert entry["reason"] == f"accuracy 0.983 < serving 0.992 ({VERSION_A})"
    assert active_version(skipped) == VERSION_A and skipped["phase"] == "Available"
    assert template_version(deployment(cluster)) == VERSION_A
    assert serve_config(cluster)["adapters"][0]["version"] == VERSION_A
    events = cluster.wait_for(
        lambda: [e for e in cluster.events(cluster.ns, ADEP) if e["reason"] == "RolloutSkipped"],
        timeout=TIMEOUT,
        message="a RolloutSkipped event",
    )
    assert [e["message"] for e in events] == [f"{VERSION_B} accuracy 0.983 < serving 0.992 ({VERSION_A})"]

    # A person may still roll forward on purpose: pin the skipped version.
    pin_version(cluster, VERSION_B)
    wait_template_version(cluster, VERSION_B)
    ready_pods(cluster)
    live = wait_adep(cluster, operator, lambda s: active_version(s) == VERSION_B, "B pinned and serving")
    assert serve_config(cluster)["adapters"][0] == {
        "name": ADEP,
        "version": VERSION_B,
        "uri": uri_b,
        "digest": DIGEST_B,
    }
    assert [(h["version"], h.get("outcome")) for h in live["history"]] == [
        (VERSION_A, "RolledOut"),
        (VERSION_B, "RolledOut"),
    ]


def serving_version_a(cluster: Cluster, operator: Operator) -> None:
    """The example AdapterDeployment Available with the FineTuneJob's adapter A on ready pods."""
    bind_claims(cluster)
    succeeded_finetunejob(cluster, DIGEST_A)
    cluster.kubectl("apply", "-f", str(EXAMPLE))
    wait_deployment(cluster)
    ready_pods(cluster)
    wait_adep(cluster, operator, lambda s: s.get("phase") == "Available", "Available")


def test_deleting_the_adapterdeployment_deletes_its_children(cluster: Cluster, operator: Operator) -> None:
    serving_version_a(cluster, operator)
    selector = f"kubetune.dev/adapterdeployment={ADEP}"
    children = {
        kind: cluster.list(kind, cluster.ns, label_selector=selector)
        for kind in ("deployments.apps", "services", "configmaps", "poddisruptionbudgets.policy")
    }
    assert all(children.values()), {k: len(v) for k, v in children.items()}

    cluster.kubectl("delete", "adep", ADEP, "--timeout=60s")  # kubectl waits: no finalizer may stick
    # The real garbage collector: AdapterDeployment -> Deployment, Service, ConfigMap, PDB;
    # Deployment -> ReplicaSet -> Pods.
    cluster.wait_for(
        lambda: (
            not any(cluster.list(kind, cluster.ns, label_selector=selector) for kind in children)
            and not cluster.list("replicasets.apps", cluster.ns, label_selector=selector)
            and not cluster.list("pods", cluster.ns, label_selector=selector)
        ),
        timeout=60,
        message="garbage collection",
    )
    # The FineTuneJob is not the AdapterDeployment's child: it stays.
    assert cluster.get("ftj", cluster.ns, "support-intents") is not None


def test_a_serving_child_deleted_by_someone_is_put_back_at_once(cluster: Cluster, operator: Operator) -> None:
    # No timer is due (no canary, no Prometheus): the child's own watch event must wake the operator.
    serving_version_a(cluster, operator)
    children = [
        ("services", ADEP),
        ("poddisruptionbudgets.policy", STABLE),
        ("configmaps", "support-intents-serve-config"),
    ]
    uids = {}
    for kind, name in children:
        found = cluster.get(kind, cluster.ns, name)
        assert found is not None, (kind, name)
        uids[kind] = found["metadata"]["uid"]
        cluster.kubectl("delete", kind, name)
    for kind, name in children:
        back = cluster.wait_for(
            lambda k=kind, n=name: (
                (o := cluster.get(k, cluster.ns, n)) and o["metadata"]["uid"] != uids[k] and o
            ),
            timeout=TIMEOUT,
            message=f"{kind}/{name} created again",
        )
        assert back["metadata"]["ownerReferences"][0]["kind"] == "AdapterDeployment"


def test_kubectl_scale_changes_the_serving_pods_through_the_scale_subresource(
    cluster: Cluster, operator: Operator
) -> None:
    serving_version_a(cluster, operator)
    scale = json.loads(cluster.kubectl("get", "adep", ADEP, "--subresource=scale", "-o", "json").stdout)
    assert scale["kind"] == "Scale" and scale["spec"]["replicas"] == 2 and scale["status"]["replicas"] == 2
    selector = scale["status"]["selector"]
    assert "kubetune.dev/track=stable" in selector and f"kubetune.dev/adapterdeployment={ADEP}" in selector
    stable_pods = cluster.list("pods", cluster.ns, label_selector=selector)
    assert len(stable_pods) == 2

    cluster.kubectl("scale", "adep", ADEP, "--replicas=3")
    cluster.wait_for(lambda: deployment(cluster)["spec"]["replicas"] == 3, timeout=TIMEOUT, message="3 pods")
    ready_pods(cluster, count=3)
    scaled = wait_adep(
        cluster, operator, lambda s: s.get("replicas") == 3 and s.get("readyReplicas") == 3, "3"
    )
    assert scaled["phase"] == "Available" and scaled["selector"] == selector
    scale = json.loads(cluster.kubectl("get", "adep", ADEP, "--subresource=scale", "-o", "json").stdout)
    assert scale["spec"]["replicas"] == 3 and scale["status"]["replicas"] == 3
