"""The emulated API server behaves like kube-apiserver where kubectl and Kopf can tell."""

from __future__ import annotations

import json
import pathlib
import urllib.request

import pytest
import yaml
from emulator import EmulatedCluster, HTTPError

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
INTENTS = REPO_ROOT / "examples" / "finetunejob-support-intents.yaml"


def configmap(name: str, labels: dict[str, str] | None = None, owner: dict | None = None) -> dict:
    meta: dict = {"name": name, "labels": labels or {}}
    if owner:
        meta["ownerReferences"] = [
            {
                "apiVersion": owner["apiVersion"],
                "kind": owner["kind"],
                "name": owner["metadata"]["name"],
                "uid": owner["metadata"]["uid"],
                "controller": True,
            }
        ]
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"k": "v"}}


def kubectl_json(cluster: EmulatedCluster, *args: str) -> dict:
    return json.loads(cluster.kubectl(*args, "-o", "json").stdout)


def test_apply_get_patch_delete_round_trip(cluster: EmulatedCluster) -> None:
    assert (
        "finetunejob.kubetune.dev/support-intents created"
        in cluster.kubectl("apply", "-f", str(INTENTS)).stdout
    )
    created = kubectl_json(cluster, "get", "ftj", "support-intents")
    meta = created["metadata"]
    assert meta["generation"] == 1 and meta["uid"] and meta["creationTimestamp"].endswith("Z")

    cluster.kubectl("patch", "ftj", "support-intents", "--type=merge", "-p", '{"spec":{"suspend":true}}')
    patched = kubectl_json(cluster, "get", "finetunejob", "support-intents")
    assert patched["spec"]["suspend"] is True
    assert patched["metadata"]["generation"] == 2
    assert int(patched["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])
    assert patched["metadata"]["uid"] == meta["uid"]

    assert (
        'finetunejob.kubetune.dev "support-intents" deleted'
        in cluster.kubectl("delete", "ftj", "support-intents").stdout
    )
    assert cluster.get("ftj", "default", "support-intents") is None


def test_metadata_only_changes_bump_resource_version_not_generation(cluster: EmulatedCluster) -> None:
    cluster.kubectl("apply", "-f", str(INTENTS))
    before = cluster.get("ftj", "default", "support-intents")

    cluster.kubectl("label", "ftj", "support-intents", "team=ml")
    after = cluster.get("ftj", "default", "support-intents")

    assert after["metadata"]["labels"] == {"team": "ml"}
    assert after["metadata"]["generation"] == 1
    assert int(after["metadata"]["resourceVersion"]) > int(before["metadata"]["resourceVersion"])


def test_unchanged_apply_is_a_no_op(cluster: EmulatedCluster) -> None:
    cluster.kubectl("apply", "-f", str(INTENTS))
    before = cluster.get("ftj", "default", "support-intents")

    result = cluster.kubectl("apply", "-f", str(INTENTS))

    assert "unchanged" in result.stdout
    assert cluster.get("ftj", "default", "support-intents")["metadata"] == before["metadata"]


def test_status_subresource_separates_spec_and_status(cluster: EmulatedCluster) -> None:
    cluster.kubectl("apply", "-f", str(INTENTS))

    after_status = cluster.patch_status(
        "ftj", "default", "support-intents", {"phase": "Running", "progress": "5/10"}
    )
    assert after_status["status"]["phase"] == "Running"
    assert after_status["metadata"]["generation"] == 1  # status writes never bump generation

    # Writes to the main resource ignore .status; writes to /status ignore everything else.
    ignored = cluster.patch("ftj", "default", "support-intents", {"status": {"phase": "Failed"}})
    assert ignored["status"]["phase"] == "Running"
    via_status = cluster.request(
        "PATCH",
        cluster.path("ftj", "default", "support-intents", "status"),
        {"spec": {"suspend": True}, "status": {"loss": 0.5}},
        "application/merge-patch+json",
    )
    assert via_status["spec"]["suspend"] is False and via_status["status"]["loss"] == 0.5

    cluster.kubectl(
        "patch",
        "ftj",
        "support-intents",
        "--subresource=status",
        "--type=merge",
        "-p",
        '{"status":{"phase":"Succeeded","accuracy":0.91}}',
    )
    table = cluster.kubectl("get", "ftj").stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "PROGRESS", "LOSS", "ACCURACY", "AGE"]
    assert table[1].split()[:5] == ["support-intents", "Succeeded", "5/10", "0.5", "0.91"]


def test_status_is_validated_against_the_schema(cluster: EmulatedCluster) -> None:
    cluster.kubectl("apply", "-f", str(INTENTS))

    with pytest.raises(HTTPError) as caught:
        cluster.patch_status("ftj", "default", "support-intents", {"phase": "Exploded"})

    assert caught.value.code == 422
    assert 'status.phase: Unsupported value: "Exploded"' in caught.value.status["message"]


def test_label_and_field_selectors(cluster: EmulatedCluster) -> None:
    for name, labels in [("a", {"tier": "web"}), ("b", {"tier": "db"}), ("c", {})]:
        cluster.create(configmap(name, labels))

    def names(selector: str) -> list[str]:
        return cluster.kubectl("get", "cm", "-l", selector, "-o", "name").stdout.split()

    assert names("tier=web") == ["configmap/a"]
    assert names("tier==web") == ["configmap/a"]
    assert names("tier!=web") == ["configmap/b", "configmap/c"]
    assert names("tier in (web,db)") == ["configmap/a", "configmap/b"]
    assert names("tier notin (web)") == ["configmap/b", "configmap/c"]
    assert names("tier") == ["configmap/a", "configmap/b"]
    assert names("!tier") == ["configmap/c"]
    assert [
        o["metadata"]["name"] for o in cluster.list("configmaps", "default", field_selector="metadata.name=b")
    ] == ["b"]


def test_list_has_kind_api_version_and_resource_version(cluster: EmulatedCluster) -> None:
    cluster.kubectl("apply", "-f", str(INTENTS))

    listing = cluster.request("GET", cluster.path("ftj", "default"))

    assert listing["kind"] == "FineTuneJobList"
    assert listing["apiVersion"] == "kubetune.dev/v1alpha1"
    assert int(listing["metadata"]["resourceVersion"]) >= int(
        listing["items"][0]["metadata"]["resourceVersion"]
    )


def test_discovery_serves_short_names_and_scope(cluster: EmulatedCluster) -> None:
    lines = cluster.kubectl("api-resources", "--api-group=kubetune.dev", "--no-headers").stdout.splitlines()

    rows = sorted(line.split() for line in lines)
    assert rows == [
        ["adapterdeployments", "adep", "kubetune.dev/v1alpha1", "true", "AdapterDeployment"],
        ["finetunejobs", "ftj", "kubetune.dev/v1alpha1", "true", "FineTuneJob"],
    ]
    assert "FIELD: lora <Object>" in cluster.kubectl("explain", "ftj.spec.lora").stdout


def test_owner_references_garbage_collect_dependents(cluster: EmulatedCluster) -> None:
    cluster.kubectl("apply", "-f", str(INTENTS))
    owner = cluster.get("ftj", "default", "support-intents")
    cluster.create(configmap("support-intents-config", owner=owner))
    job = cluster.create(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": "support-intents-train",
                "ownerReferences": configmap("x", owner=owner)["metadata"]["ownerReferences"],
            },
            "spec": {"template": {"spec": {"containers": [{"name": "t", "image": "i"}]}}},
        }
    )
    cluster.create(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "support-intents-train-abcde",
                "ownerReferences": configmap("x", owner=job)["metadata"]["ownerReferences"],
            },
            "spec": {"containers": [{"name": "t", "image": "i"}]},
        }
    )
    cluster.create(configmap("unrelated"))

    cluster.kubectl("delete", "ftj", "support-intents")

    cluster.wait_for(
        lambda: cluster.get("jobs", "default", "support-intents-train") is None, message="job collected"
    )
    assert cluster.get("configmaps", "default", "support-intents-config") is None
    assert cluster.get("pods", "default", "support-intents-train-abcde") is None  # collected transitively
    assert cluster.get("configmaps", "default", "unrelated") is not None


def test_orphan_deletion_keeps_dependents_without_the_reference(cluster: EmulatedCluster) -> None:
    cluster.kubectl("apply", "-f", str(INTENTS))
    cluster.create(configmap("child", owner=cluster.get("ftj", "default", "support-intents")))

    cluster.kubectl("delete", "ftj", "support-intents", "--cascade=orphan")

    child = cluster.get("configmaps", "default", "child")
    assert child is not None and "ownerReferences" not in child["metadata"]


def test_finalizers_hold_deletion_until_removed(cluster: EmulatedCluster) -> None:
    cluster.kubectl("apply", "-f", str(INTENTS))
    cluster.patch("ftj", "default", "support-intents", {"metadata": {"finalizers": ["kubetune.dev/cleanup"]}})

    cluster.kubectl("delete", "ftj", "support-intents", "--wait=false")
    pending = cluster.get("ftj", "default", "support-intents")
    assert pending["metadata"]["deletionTimestamp"]
    assert pending["metadata"]["generation"] == 2

    cluster.patch("ftj", "default", "support-intents", {"metadata": {"finalizers": None}})
    assert cluster.get("ftj", "default", "support-intents") is None


def test_watch_replays_events_after_a_resource_version(cluster: EmulatedCluster) -> None:
    cluster.kubectl("apply", "-f", str(INTENTS))
    created_rv = cluster.get("ftj", "default", "support-intents")["metadata"]["resourceVersion"]
    cluster.patch("ftj", "default", "support-intents", {"spec": {"suspend": True}})
    cluster.kubectl("delete", "ftj", "support-intents")

    query = f"watch=true&resourceVersion={created_rv}&timeoutSeconds=1"
    url = f"{cluster.url}{cluster.path('ftj', 'default')}?{query}"
    with urllib.request.urlopen(url, timeout=10) as response:
        events = [json.loads(line) for line in response.read().splitlines() if line.strip()]

    assert [e["type"] for e in events] == ["MODIFIED", "DELETED"]
    revisions = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert revisions == sorted(revisions) and revisions[0] > int(created_rv)


def test_pod_logs_are_settable(cluster: EmulatedCluster) -> None:
    cluster.create(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "trainer"},
            "spec": {"containers": [{"name": "train", "image": "i"}]},
            "status": {"phase": "Running"},
        }
    )
    cluster.set_pod_log("default", "trainer", "step 1 loss 2.3\nstep 2 loss 1.9\n")

    assert cluster.kubectl("logs", "trainer").stdout == "step 1 loss 2.3\nstep 2 loss 1.9\n"
    assert cluster.kubectl("logs", "trainer", "--tail=1").stdout == "step 2 loss 1.9\n"
    assert cluster.get("pods", "default", "trainer")["status"]["phase"] == "Running"


def test_strategic_merge_patch_merges_containers_by_name(cluster: EmulatedCluster) -> None:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "server"},
        "spec": {
            "selector": {"matchLabels": {"app": "s"}},
            "template": {
                "metadata": {"labels": {"app": "s"}},
                "spec": {"containers": [{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}]},
            },
        },
    }
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(deployment))
    cluster.patch(
        "deployments",
        "default",
        "server",
        {
            "spec": {
                "template": {
                    "spec": {
                        "containers": [
                            {"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}]},
                            {"name": "b", "image": "b:1"},
                        ]
                    }
                }
            }
        },
    )  # something kubectl apply did not set

    deployment["spec"]["template"]["spec"]["containers"][1]["image"] = "b:2"
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(deployment))

    containers = cluster.get("deployments", "default", "server")["spec"]["template"]["spec"]["containers"]
    assert containers == [
        {"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}]},
        {"name": "b", "image": "b:2"},
    ]


def test_json_patch_and_stale_updates(cluster: EmulatedCluster) -> None:
    cluster.kubectl("apply", "-f", str(INTENTS))
    stale = cluster.get("ftj", "default", "support-intents")

    cluster.kubectl(
        "patch",
        "ftj",
        "support-intents",
        "--type=json",
        "-p",
        '[{"op": "replace", "path": "/spec/training/epochs", "value": 6}]',
    )
    assert cluster.get("ftj", "default", "support-intents")["spec"]["training"]["epochs"] == 6

    result = cluster.kubectl("replace", "-f", "-", input=json.dumps(stale), check=False)
    assert result.returncode != 0
    assert "the object has been modified; please apply your changes to the latest version" in result.stderr


def test_namespaces_must_exist_and_generate_name_works(cluster: EmulatedCluster) -> None:
    missing = cluster.kubectl("apply", "-n", "nowhere", "-f", str(INTENTS), check=False)
    assert 'namespaces "nowhere" not found' in missing.stderr

    created = cluster.kubectl(
        "create",
        "-o",
        "name",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"generateName": "run-"}}),
    ).stdout
    assert created.startswith("configmap/run-") and len(created.strip()) == len("configmap/run-") + 5


def test_kopf_operator_sees_events_and_writes_status(
    cluster: EmulatedCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A minimal Kopf operator (the real framework) runs against the emulator: discovery, list,
    watch, status patch through the subresource, and child creation all work."""
    kopf = pytest.importorskip("kopf")
    from kopf.testing import KopfRunner

    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**kwargs: object) -> object:
        return kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.create("kubetune.dev", "v1alpha1", "finetunejobs", registry=registry)
    def created(name: str, patch: kopf.Patch, **_: object) -> None:
        patch.status["phase"] = "Pending"

    settings = kopf.OperatorSettings()
    settings.watching.server_timeout = 5
    with KopfRunner(
        ["run", "--standalone", "-n", "default"], registry=registry, settings=settings, timeout=30
    ):
        cluster.kubectl("apply", "-f", str(INTENTS))
        cluster.wait_for(
            lambda: (cluster.get("ftj", "default", "support-intents").get("status") or {}).get("phase"),
            timeout=15,
            message="Kopf to set status.phase",
        )
    assert cluster.get("ftj", "default", "support-intents")["status"]["phase"] == "Pending"


def test_watch_serves_tables_for_kubectl_get_watch(cluster: EmulatedCluster) -> None:
    cluster.kubectl("apply", "-f", str(INTENTS))
    created_rv = cluster.get("ftj", "default", "support-intents")["metadata"]["resourceVersion"]
    cluster.patch_status("ftj", "default", "support-intents", {"phase": "Running"})

    query = f"watch=true&resourceVersion={created_rv}&timeoutSeconds=1"
    url = f"{cluster.url}{cluster.path('ftj', 'default')}?{query}"
    request = urllib.request.Request(url, headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"})
    with urllib.request.urlopen(request, timeout=10) as response:
        (event,) = [json.loads(line) for line in response.read().splitlines() if line.strip()]

    assert event["type"] == "MODIFIED" and event["object"]["kind"] == "Table"
    assert event["object"]["rows"][0]["cells"][:2] == ["support-intents", "Running"]
