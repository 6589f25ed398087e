"""Argo CD would not show the example app OutOfSync forever: apply the example manifests, let the real
operator act on them, then compare the live objects with Argo CD's prediction (the manifest as the API
server defaults it: a server-side dry-run create) after the app's ignoreDifferences rules.

Everything the operator or the API server adds must be either a schema default (in the prediction)
or covered by an ignore rule (status, kubetune.dev/* annotations); anything else is a sync loop.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jq
import yaml
from emulator import EmulatedCluster
from test_operator_finetunejob import NS, TIMEOUT, Operator

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples/argocd/support-intents"
APP = yaml.safe_load((ROOT / "examples/argocd/apps/support-intents.yaml").read_text())
SERVER_METADATA = ("uid", "resourceVersion", "generation", "creationTimestamp", "managedFields", "namespace")


def normalize(obj: dict[str, Any]) -> dict[str, Any]:
    """Argo CD's view: ignoreDifferences applied, server-owned metadata dropped."""
    out = copy.deepcopy(obj)
    group, kind = out["apiVersion"].split("/")[0], out["kind"]
    for rule in APP["spec"]["ignoreDifferences"]:
        if (rule.get("group", ""), rule["kind"]) != (group, kind):
            continue
        for pointer in rule.get("jsonPointers", []):
            *parents, last = pointer.strip("/").split("/")
            node = out
            for part in parents:
                node = node.get(part, {})
            node.pop(last, None)
        for expression in rule.get("jqPathExpressions", []):
            out = jq.compile(f"del({expression})").input_value(out).first()
    for key in SERVER_METADATA:
        out["metadata"].pop(key, None)
    if not out["metadata"].get("annotations"):
        out["metadata"].pop("annotations", None)
    return out


def predicted(cluster: EmulatedCluster, manifest: Path) -> dict[str, Any]:
    """The manifest as the API server would store it (defaults applied), via a server-side dry run."""
    result = cluster.kubectl(
        "create", "--dry-run=server", "-n", NS, "-f", str(manifest), "-o", "json", check=False
    )
    if result.returncode != 0 and "AlreadyExists" in result.stderr:
        doc = yaml.safe_load(manifest.read_text())
        doc["metadata"]["name"] += "-prediction"
        result = cluster.kubectl(
            "create", "--dry-run=server", "-n", NS, "-f", "-", "-o", "json", input=yaml.safe_dump(doc)
        )
        obj = json.loads(result.stdout)
        obj["metadata"]["name"] = obj["metadata"]["name"].removesuffix("-prediction")
        return obj
    return json.loads(result.stdout)


def test_operator_and_defaults_leave_the_example_app_in_sync(
    cluster: EmulatedCluster, operator: Operator
) -> None:
    manifests = {kind: EXAMPLE / f"{kind.lower()}.yaml" for kind in ("FineTuneJob", "AdapterDeployment")}
    for path in manifests.values():
        cluster.kubectl(
            "apply", "--server-side", "--field-manager=argocd-controller", "-n", NS, "-f", str(path)
        )
    ftj_name = yaml.safe_load(manifests["FineTuneJob"].read_text())["metadata"]["name"]
    adep_name = yaml.safe_load(manifests["AdapterDeployment"].read_text())["metadata"]["name"]
    # Let the operator act: Kopf's annotations, the status, the children.
    cluster.wait_for(
        lambda: (
            (o := cluster.get("ftj", NS, ftj_name))
            and o.get("status", {}).get("phase")
            and any(k.startswith("kubetune.dev/") for k in o["metadata"].get("annotations", {}))
        ),
        timeout=TIMEOUT,
        message="operator acted on the FineTuneJob",
    )
    cluster.wait_for(
        lambda: (o := cluster.get("adep", NS, adep_name)) and o.get("status", {}).get("phase"),
        timeout=TIMEOUT,
        message="operator acted on the AdapterDeployment",
    )
    for kind, path in manifests.items():
        resource = "ftj" if kind == "FineTuneJob" else "adep"
        name = yaml.safe_load(path.read_text())["metadata"]["name"]
        live = cluster.get(resource, NS, name)
        assert live is not None
        assert (
            live.get("status")
            and any(k.startswith("kubetune.dev/") for k in live["metadata"].get("annotations", {}))
        ) or kind == "AdapterDeployment", "the operator wrote nothing: the test proves nothing"
        want, have = normalize(predicted(cluster, path)), normalize(live)
        assert have == want, f"{kind} would show OutOfSync:\nlive:      {have}\npredicted: {want}"
