"""examples/argocd/: app of apps, sync-wave order, and ignoreDifferences that cover what the operator writes.

Pure checks (no cluster, no Argo CD): the Applications point at paths that exist and hold what they
claim, the waves order chart -> FineTuneJob -> AdapterDeployment, the workload manifests are the
repository's examples plus a wave, the chart values pass the chart's schema, and the Application's
ignoreDifferences, evaluated with jq the way Argo CD does (`del(<expression>)`), remove every field
the operator writes to a live FineTuneJob/AdapterDeployment: status, and the annotations Kopf writes
(their keys formed by Kopf's own storage classes with the operator's prefix) or the retrain-now
action sets, while the user's own annotations stay compared.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jq
import jsonschema
import kopf
import pytest
import yaml

from kubetune.api.adapterdeployment import AdapterDeployment
from kubetune.api.finetunejob import FineTuneJob

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "argocd"
OPERATOR = ROOT / "operator" / "kubetune_operator"
WAVE = "argocd.argoproj.io/sync-wave"
INTEGRATIONS = ROOT / "integrations" / "argocd" / "kubetune.dev"

Obj = dict[str, Any]


def load(path: Path) -> Obj:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert len(docs) == 1, path
    return docs[0]


def wave(obj: Obj) -> int:
    return int(obj["metadata"].get("annotations", {}).get(WAVE, "0"))


@pytest.fixture(scope="module")
def root() -> Obj:
    return load(EXAMPLES / "root.yaml")


@pytest.fixture(scope="module")
def apps() -> dict[str, Obj]:
    return {app["metadata"]["name"]: app for app in map(load, sorted((EXAMPLES / "apps").glob("*.yaml")))}


@pytest.fixture(scope="module")
def workload() -> dict[str, Obj]:
    return {obj["kind"]: obj for obj in map(load, sorted((EXAMPLES / "support-intents").glob("*.yaml")))}


def test_every_application_is_well_formed(root: Obj, apps: dict[str, Obj]) -> None:
    for app in [root, *apps.values()]:
        assert (app["apiVersion"], app["kind"]) == ("argoproj.io/v1alpha1", "Application")
        assert app["metadata"]["namespace"] == "argocd"
        spec = app["spec"]
        assert spec["project"] and spec["destination"]["server"] and spec["destination"]["namespace"]
        source = spec["source"]
        assert source["repoURL"].endswith(".git") and source["targetRevision"]
        assert (ROOT / source["path"]).is_dir(), f"{app['metadata']['name']}: {source['path']} does not exist"
        assert spec["syncPolicy"]["automated"] == {"prune": True, "selfHeal": True}


def test_root_deploys_exactly_the_apps_folder(root: Obj, apps: dict[str, Obj]) -> None:
    assert root["spec"]["source"]["path"] == "examples/argocd/apps"
    assert set(apps) == {"kubetune", "support-intents"}


def test_waves_put_the_chart_first_then_training_then_serving(
    apps: dict[str, Obj], workload: dict[str, Obj]
) -> None:
    assert wave(apps["kubetune"]) < wave(apps["support-intents"])
    assert set(workload) == {"FineTuneJob", "AdapterDeployment"}
    ftj, adep = workload["FineTuneJob"], workload["AdapterDeployment"]
    assert wave(ftj) < wave(adep)
    assert adep["spec"]["adapter"]["fineTuneJobRef"]["name"] == ftj["metadata"]["name"]
    assert apps["support-intents"]["spec"]["source"]["path"] == "examples/argocd/support-intents"


def test_chart_app_turns_on_the_argocd_keys_with_valid_values(apps: dict[str, Obj]) -> None:
    chart = apps["kubetune"]["spec"]
    assert chart["source"]["path"] == "charts/kubetune"
    values = chart["source"]["helm"]["valuesObject"]
    schema = json.loads((ROOT / "charts/kubetune/values.schema.json").read_text())
    jsonschema.validate(values, schema)
    assert values["argocd"]["enabled"] is True
    assert "ServerSideApply=true" in chart["syncPolicy"]["syncOptions"]
    assert "CreateNamespace=true" in chart["syncPolicy"]["syncOptions"]


def test_workload_is_the_repository_examples_plus_a_wave(workload: dict[str, Obj]) -> None:
    originals = {
        "FineTuneJob": load(ROOT / "examples/k8s/finetunejob-support-intents.yaml"),
        "AdapterDeployment": load(ROOT / "examples/k8s/adapterdeployment-support-intents.yaml"),
    }
    for kind, obj in workload.items():
        stripped = copy.deepcopy(obj)
        annotations = stripped["metadata"].pop("annotations")
        assert set(annotations) == {WAVE}
        assert stripped == originals[kind], f"{kind}: examples/argocd differs from the repository example"
        assert "suspend" not in obj["spec"], "the suspend/resume actions own spec.suspend"
    FineTuneJob.model_validate(workload["FineTuneJob"])
    AdapterDeployment.model_validate(workload["AdapterDeployment"])
    assert "version" not in workload["AdapterDeployment"]["spec"]["adapter"], "the rollback action owns it"


def test_workload_app_sync_options(apps: dict[str, Obj]) -> None:
    app = apps["support-intents"]
    options = app["spec"]["syncPolicy"]["syncOptions"]
    assert {
        "ServerSideApply=true",
        "RespectIgnoreDifferences=true",
        "SkipDryRunOnMissingResource=true",
    } <= set(options)
    assert app["metadata"]["annotations"]["argocd.argoproj.io/compare-options"] == "ServerSideDiff=true"
    assert app["spec"]["syncPolicy"]["retry"]["limit"] >= 1


# --- ignoreDifferences against what the operator writes --------------------------------------------


def operator_annotation_keys() -> set[str]:
    """The annotations Kopf writes with the operator's storage settings, formed by Kopf itself."""
    main = (OPERATOR / "main.py").read_text()
    prefixes = set(re.findall(r'Annotations(?:Progress|DiffBase)Storage\(\s*prefix="([^"]+)"', main))
    assert len(prefixes) == 1, f"expected one Kopf annotation prefix in main.py, found {prefixes}"
    (prefix,) = prefixes
    diffbase_key = re.search(r'AnnotationsDiffBaseStorage\([^)]*key="([^"]+)"', main, re.S)
    assert diffbase_key is not None
    handler_ids = set()
    for handlers in (OPERATOR / "handlers").glob("*.py"):
        handler_ids |= set(re.findall(r'\bid="([^"]+)"', handlers.read_text()))
    assert {"finetunejob-changed", "adapterdeployment-changed"} <= handler_ids
    progress = kopf.AnnotationsProgressStorage(prefix=prefix)
    diffbase = kopf.AnnotationsDiffBaseStorage(prefix=prefix, key=diffbase_key.group(1))
    keys = {key for hid in handler_ids for key in progress.make_keys(hid)}
    keys |= set(progress.make_keys(progress.touch_key))
    keys |= set(diffbase.make_keys(diffbase.key))
    return keys


def live_object(desired: Obj, status_fixture: Path) -> Obj:
    """The object as the operator leaves it: Git's manifest + server metadata, annotations, status."""
    live = copy.deepcopy(desired)
    meta = live["metadata"]
    meta.update({"namespace": "ml-team-a", "generation": 1, "uid": "0f0e0d0c", "resourceVersion": "4242"})
    for key in operator_annotation_keys():
        meta["annotations"][key] = '{"started":"2026-03-02T09:00:00Z"}'
    meta["annotations"]["kubetune.dev/retrain-requested"] = "2026-03-04T08:00:00Z"
    live["status"] = yaml.safe_load(status_fixture.read_text())["status"]
    return live


def ignore(app: Obj, obj: Obj) -> Obj:
    """Argo CD's normalization: drop each jsonPointer, and `del(expr)` for each jqPathExpression."""
    group, kind = obj["apiVersion"].split("/")[0], obj["kind"]
    out = copy.deepcopy(obj)
    rules = [r for r in app["spec"]["ignoreDifferences"] if (r.get("group", ""), r["kind"]) == (group, kind)]
    assert rules, f"no ignoreDifferences for {group}/{kind}"
    for rule in rules:
        for pointer in rule.get("jsonPointers", []):
            *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in pointer.strip("/").split("/")]
            node = out
            for part in parents:
                node = node.get(part, {})
            node.pop(last, None)
        for expression in rule.get("jqPathExpressions", []):
            out = jq.compile(f"del({expression})").input_value(out).first()
    return out


@pytest.mark.parametrize(
    ("kind", "fixture"),
    [
        ("FineTuneJob", "FineTuneJob/testdata/succeeded.yaml"),
        ("AdapterDeployment", "AdapterDeployment/testdata/available_retraining.yaml"),
    ],
)
def test_ignore_differences_cover_everything_the_operator_writes(
    apps: dict[str, Obj], workload: dict[str, Obj], kind: str, fixture: str
) -> None:
    app = apps["support-intents"]
    desired = workload[kind]
    live = live_object(desired, INTEGRATIONS / fixture)
    normalized = ignore(app, live)
    for server_field in ("namespace", "generation", "uid", "resourceVersion"):
        normalized["metadata"].pop(server_field)
    assert normalized == ignore(app, desired) == desired
    # The user's own annotation is still compared: a changed wave in Git shows up as a diff.
    changed = copy.deepcopy(live)
    changed["metadata"]["annotations"][WAVE] = "7"
    assert ignore(app, changed)["metadata"]["annotations"][WAVE] == "7"


def test_ignore_differences_keep_an_object_without_annotations_intact(apps: dict[str, Obj]) -> None:
    bare = {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "x"},
        "spec": {},
    }
    assert ignore(apps["support-intents"], bare) == bare
