"""From a Succeeded FineTuneJob to a serving Deployment, rollout, new adapter and rollback — the real
operator against the emulated API server; the test plays the Deployment controller."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from emulator import EmulatedCluster
from test_operator_finetunejob import NS, TIMEOUT, Operator, finish_job, run_pod, wait_job

ROOT = Path(__file__).resolve().parents[2]
DIGEST_A, DIGEST_B = "sha256:" + "aa" * 32, "sha256:" + "bb" * 32


def succeeded_finetunejob(cluster: EmulatedCluster, digest: str) -> None:
    """(Re)run the support-intents FineTuneJob through the operator to Succeeded with ``digest``."""
    if cluster.get("ftj", NS, "support-intents") is not None:
        cluster.kubectl("delete", "ftj", "support-intents")
        cluster.wait_for(
            lambda: cluster.get("ftj", NS, "support-intents") is None,
            timeout=TIMEOUT,
            message="old FineTuneJob gone",
        )
    cluster.kubectl("apply", "-f", str(ROOT / "examples/finetunejob-support-intents.yaml"))
    vjob = wait_job(cluster, "support-intents-validate")
    finish_job(cluster, vjob["metadata"]["name"], ok=True)
    tjob = wait_job(cluster, "support-intents-train")
    result = {
        "adapterUri": "pvc://kubetune-output/support-intents",
        "digest": digest,
        "metrics": {"after_accuracy": 0.9583},
    }
    run_pod(cluster, tjob, "t1", phase="Succeeded", termination=result)
    finish_job(cluster, tjob["metadata"]["name"], ok=True)
    cluster.wait_for(
        lambda: cluster.get("ftj", NS, "support-intents").get("status", {}).get("phase") == "Succeeded",
        timeout=TIMEOUT,
        message="FineTuneJob Succeeded",
    )


def play_deployment_controller(cluster: EmulatedCluster, ready: int) -> dict[str, Any]:
    dep = cluster.get("deployments.apps", NS, "support-intents-server")
    assert dep is not None
    replicas = dep["spec"]["replicas"]
    return cluster.patch_status(
        "deployments.apps",
        NS,
        "support-intents-server",
        {
            "observedGeneration": dep["metadata"]["generation"],
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": ready,
            "availableReplicas": ready,
        },
    )


def adep_status(cluster: EmulatedCluster) -> dict[str, Any]:
    obj = cluster.get("adep", NS, "support-intents")
    assert obj is not None
    return obj.get("status", {})


def wait_adep(
    cluster: EmulatedCluster, operator: Operator, predicate: Any, message: str, timeout: float = TIMEOUT
) -> dict[str, Any]:
    try:
        return cluster.wait_for(
            lambda: (s := adep_status(cluster)) and predicate(s) and s, timeout=timeout, message=message
        )
    except AssertionError:
        print(operator.logs()[-5000:])
        raise


def test_adapterdeployment_serves_the_finetunejob_adapter(
    cluster: EmulatedCluster, operator: Operator
) -> None:
    cluster.kubectl("apply", "-f", str(ROOT / "examples/adapterdeployment-support-intents.yaml"))
    pending = wait_adep(cluster, operator, lambda s: s.get("phase") == "Pending", "Pending without adapter")
    assert "support-intents" in pending["message"]
    assert cluster.get("deployments.apps", NS, "support-intents-server") is None

    succeeded_finetunejob(cluster, DIGEST_A)
    dep = cluster.wait_for(
        lambda: cluster.get("deployments.apps", NS, "support-intents-server"),
        timeout=TIMEOUT,
        message="Deployment",
    )
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "registry.example/server:1.2.3"
    assert container["args"] == ["serve", "-f", "/etc/kubetune/serve-config.yaml"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    config = yaml.safe_load(
        cluster.get("configmaps", NS, "support-intents-serve-config")["data"]["serve-config.yaml"]
    )
    assert config["adapters"][0]["uri"] == "pvc://kubetune-output/support-intents"
    assert config["adapters"][0]["version"] == "support-intents-aaaaaaaa"
    service_selector = cluster.get("services", NS, "support-intents")["spec"]["selector"]
    # The Service selects both tracks (stable + canary); the Deployment only its own.
    assert service_selector.items() <= dep["spec"]["selector"]["matchLabels"].items()
    assert dep["spec"]["selector"]["matchLabels"]["kubetune.dev/track"] == "stable"
    assert cluster.get("poddisruptionbudgets.policy", NS, "support-intents-server") is not None
    wait_adep(cluster, operator, lambda s: s.get("phase") == "Progressing", "Progressing")

    play_deployment_controller(cluster, ready=2)
    live = wait_adep(cluster, operator, lambda s: s.get("phase") == "Available", "Available")
    assert live["activeAdapter"]["version"] == "support-intents-aaaaaaaa"
    assert live["activeAdapter"]["digest"] == DIGEST_A and live["activeAdapter"]["accuracy"] == 0.9583
    assert live["readyReplicas"] == 2

    # A new successful run of the job rolls out a new version; the old one serves meanwhile.
    succeeded_finetunejob(cluster, DIGEST_B)
    cluster.wait_for(
        lambda: (
            cluster.get("deployments.apps", NS, "support-intents-server")["spec"]["template"]["metadata"][
                "annotations"
            ]["kubetune.dev/adapter-version"]
            == "support-intents-bbbbbbbb"
        ),
        timeout=TIMEOUT,
        message="template updated",
    )
    play_deployment_controller(cluster, ready=2)
    live = wait_adep(
        cluster,
        operator,
        lambda s: (s.get("activeAdapter") or {}).get("version") == "support-intents-bbbbbbbb",
        "second version active",
    )
    assert live["phase"] == "Available"
    assert [h["version"] for h in live["history"]] == ["support-intents-aaaaaaaa", "support-intents-bbbbbbbb"]

    # Roll back by pinning the previous version.
    cluster.kubectl(
        "patch",
        "adep",
        "support-intents",
        "--type=merge",
        "-p",
        '{"spec": {"adapter": {"version": "support-intents-aaaaaaaa"}}}',
    )
    cluster.wait_for(
        lambda: (
            cluster.get("deployments.apps", NS, "support-intents-server")["spec"]["template"]["metadata"][
                "annotations"
            ]["kubetune.dev/adapter-version"]
            == "support-intents-aaaaaaaa"
        ),
        timeout=TIMEOUT,
        message="rolled back template",
    )
    play_deployment_controller(cluster, ready=2)
    live = wait_adep(
        cluster,
        operator,
        lambda s: (s.get("activeAdapter") or {}).get("version") == "support-intents-aaaaaaaa",
        "rollback active",
    )
    assert live["activeAdapter"]["digest"] == DIGEST_A

    # Pods lost after the rollout: Degraded, with a Warning event.
    play_deployment_controller(cluster, ready=1)
    degraded = wait_adep(cluster, operator, lambda s: s.get("phase") == "Degraded", "Degraded")
    assert "1/2" in degraded["message"]
    cluster.wait_for(
        lambda: any(e["type"] == "Warning" for e in cluster.events(NS, "support-intents")),
        timeout=TIMEOUT,
        message="a Warning event",
    )
    table = cluster.kubectl("get", "adep").stdout
    assert "support-intents-aaaaaaaa" in table and "Degraded" in table, table
