"""Argo CD would not show the example app OutOfSync forever: sync the example manifests the way Argo CD
does (server-side apply, field manager argocd-controller), let the real operator act on them, then
diff them the way Argo CD's ServerSideDiff=true does, against the real API server.

Two views, both after the app's ignoreDifferences rules:
- the server-side diff: a server-side apply dry run of the Git manifest over the live object
  (``kubectl diff --server-side`` and ``kubectl apply --server-side --dry-run=server``) predicts no
  change, so the operator never rewrote a field that Git owns;
- the fresh prediction: the manifest as the server would store it when first created (its schema
  defaults applied) equals the live object, so everything the operator or the API server added is
  either a schema default or covered by an ignore rule (status, finalizers, kubetune.dev/*
  annotations); anything else would be a sync loop for a client-side diff or a re-created app.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jq
import yaml
from controlplane import Cluster
from ftj_helpers import TIMEOUT, bind_claims, wait_job
from operator_process import Operator

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples/argocd/support-intents"
APP = yaml.safe_load((ROOT / "examples/argocd/apps/support-intents.yaml").read_text())
MANAGER = "--field-manager=argocd-controller"
SERVER_METADATA = ("uid", "resourceVersion", "generation", "creationTimestamp", "managedFields", "namespace")
MANIFESTS = {
    "finetunejobs.kubetune.dev": EXAMPLE / "finetunejob.yaml",
    "adapterdeployments.kubetune.dev": EXAMPLE / "adapterdeployment.yaml",
}


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


def dry_run_apply(cluster: Cluster, manifest: dict[str, Any]) -> dict[str, Any]:
    """What a server-side apply of ``manifest`` by Argo CD would leave stored (nothing is written)."""
    result = cluster.kubectl(
        "apply",
        "--server-side",
        "--dry-run=server",
        MANAGER,
        "-f",
        "-",
        "-o",
        "json",
        input=yaml.safe_dump(manifest),
    )
    return json.loads(result.stdout)


def fresh_prediction(cluster: Cluster, manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest as the server would store it on a first sync: the same dry run under a name that
    does not exist yet, so that nothing live is merged in."""
    doc = copy.deepcopy(manifest)
    name = doc["metadata"]["name"]
    doc["metadata"]["name"] = f"{name}-prediction"
    predicted = dry_run_apply(cluster, doc)
    assert predicted["metadata"]["uid"] and "status" not in predicted, "not a create: the prediction is void"
    predicted["metadata"]["name"] = name
    return predicted


def operator_acted(live: dict[str, Any]) -> bool:
    """The operator wrote its status (it writes no annotations and no finalizer since it reconciles
    from watch events instead of Kopf's change handlers and timers)."""
    return bool(live.get("status", {}).get("phase") and live.get("status", {}).get("conditions"))


def test_operator_and_defaults_leave_the_example_app_in_sync(cluster: Cluster, operator: Operator) -> None:
    bind_claims(cluster)
    for path in MANIFESTS.values():
        cluster.kubectl("apply", "--server-side", MANAGER, "-f", str(path))
    manifests = {resource: yaml.safe_load(path.read_text()) for resource, path in MANIFESTS.items()}

    # Let the operator act: the status, the children.
    for resource, manifest in manifests.items():
        name = manifest["metadata"]["name"]
        try:
            cluster.wait_for(
                lambda r=resource, n=name: (o := cluster.get(r, cluster.ns, n)) and operator_acted(o) and o,
                timeout=TIMEOUT,
                message=f"operator acted on {resource}/{name}",
            )
        except AssertionError:
            print(operator.logs()[-6000:])
            raise
    wait_job(cluster, "support-intents-validate")  # the operator did its work, not just its bookkeeping

    for resource, manifest in manifests.items():
        # The state may still move (status, annotations): read once, then compare everything with it.
        current = cluster.get(resource, cluster.ns, manifest["metadata"]["name"])
        assert current is not None
        fresh = fresh_prediction(cluster, manifest)
        # What the operator wrote is there live and absent from Git's prediction: the ignore rules matter.
        assert operator_acted(current) and not operator_acted(fresh), "the test would prove nothing"

        over_live = dry_run_apply(cluster, manifest)
        assert normalize(over_live) == normalize(current), (
            f"{resource}: a sync would change the live object:\n"
            f"live:      {normalize(current)}\nafter sync: {normalize(over_live)}"
        )
        assert normalize(current) == normalize(fresh), (
            f"{resource} would show OutOfSync:\n"
            f"live:      {normalize(current)}\npredicted: {normalize(fresh)}"
        )

        diff = cluster.kubectl("diff", "--server-side", MANAGER, "-f", str(MANIFESTS[resource]), check=False)
        assert diff.returncode == 0 and diff.stdout == "", (
            f"kubectl diff --server-side {resource} ({diff.returncode}):\n{diff.stdout}{diff.stderr}"
        )
