"""The chart's Argo CD switch: argocd-cm keys that hold the tested Lua scripts byte for byte.

Driven by the real helm binary (scripts/tools.sh). Off by default, nothing is rendered; on, one
ConfigMap with a health key and an actions key per kind whose scripts equal integrations/argocd/
(the tested originals) exactly, with the labels Argo CD selects argocd-cm by and the sync options
that make an Argo CD sync merge the keys instead of replacing argocd-cm.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.tools import REPO_ROOT, helm

CHART = REPO_ROOT / "charts" / "kubetune"
SCRIPTS = REPO_ROOT / "integrations" / "argocd"
KINDS = {"FineTuneJob": {"suspend", "resume"}, "AdapterDeployment": {"retrain-now", "rollback"}}
KUBE_VERSIONS = ["1.30", "1.33"]

Obj = dict[str, Any]


def render(tmp_path: Path, values: Obj | None) -> list[Obj]:
    args = [helm(), "template", "kt", str(CHART), "--namespace", "kubetune-system"]
    if values is not None:
        values_file = tmp_path / "values.yaml"
        values_file.write_text(yaml.safe_dump(values))
        args += ["--values", str(values_file)]
    result = subprocess.run(args, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def argocd_configmaps(objs: list[Obj]) -> list[Obj]:
    return [
        o
        for o in objs
        if o["kind"] == "ConfigMap"
        and any(key.startswith("resource.customizations.") for key in (o.get("data") or {}))
    ]


@pytest.fixture(scope="module")
def configmap(tmp_path_factory: pytest.TempPathFactory) -> Obj:
    found = argocd_configmaps(render(tmp_path_factory.mktemp("argocd"), {"argocd": {"enabled": True}}))
    assert len(found) == 1
    return found[0]


def lua(kind: str, *parts: str) -> str:
    return (SCRIPTS / "kubetune.dev" / kind / Path(*parts)).read_text()


def test_off_by_default_renders_nothing(tmp_path: Path) -> None:
    objs = render(tmp_path, None)
    assert argocd_configmaps(objs) == []
    assert not [o for o in objs if o["metadata"].get("namespace") == "argocd"]


def test_configmap_is_argocd_cm_with_the_selector_label(configmap: Obj) -> None:
    meta = configmap["metadata"]
    assert (meta["name"], meta["namespace"]) == ("argocd-cm", "argocd")
    # Argo CD watches ConfigMaps with this label only; no other label, so a server-side apply shares
    # field ownership with Argo CD's install instead of conflicting on values it set differently.
    assert meta["labels"] == {"app.kubernetes.io/name": "argocd-cm", "app.kubernetes.io/part-of": "argocd"}
    options = meta["annotations"]["argocd.argoproj.io/sync-options"].split(",")
    assert set(options) == {"ServerSideApply=true", "Delete=false"}
    assert meta["annotations"]["helm.sh/resource-policy"] == "keep"


def test_keys_hold_the_tested_scripts_byte_for_byte(configmap: Obj) -> None:
    data = configmap["data"]
    expected_keys = {
        f"resource.customizations.{what}.kubetune.dev_{kind}"
        for kind in KINDS
        for what in ("health", "actions")
    }
    assert set(data) == expected_keys
    for kind, actions in KINDS.items():
        assert data[f"resource.customizations.health.kubetune.dev_{kind}"] == lua(kind, "health.lua")
        rendered = yaml.safe_load(data[f"resource.customizations.actions.kubetune.dev_{kind}"])
        # The shape argo-cd's ResourceActions unmarshals: discovery.lua + definitions[{name, action.lua}].
        assert set(rendered) == {"discovery.lua", "definitions"}
        assert rendered["discovery.lua"] == lua(kind, "actions", "discovery.lua")
        definitions = {d["name"]: d["action.lua"] for d in rendered["definitions"]}
        assert set(definitions) == actions
        for name, script in definitions.items():
            assert script == lua(kind, "actions", name, "action.lua")


def test_chart_copy_is_in_sync_with_integrations() -> None:
    originals = sorted(str(p.relative_to(SCRIPTS)) for p in SCRIPTS.rglob("*.lua"))
    copies = sorted(
        str(p.relative_to(CHART / "files" / "argocd"))
        for p in (CHART / "files" / "argocd").rglob("*")
        if p.is_file()
    )
    assert copies == originals, "run scripts/sync-chart-argocd.sh"
    for name in originals:
        assert (CHART / "files" / "argocd" / name).read_bytes() == (SCRIPTS / name).read_bytes(), name
    check = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "sync-chart-argocd.sh"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stderr


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_configmap_validates(configmap: Obj, version: str) -> None:
    kubernetes_validate.validate(configmap, version, strict=True)


def test_namespace_and_name_are_values(tmp_path: Path) -> None:
    values = {"argocd": {"enabled": True, "namespace": "gitops", "configMapName": "kubetune-argocd-keys"}}
    (found,) = argocd_configmaps(render(tmp_path, values))
    assert (found["metadata"]["name"], found["metadata"]["namespace"]) == ("kubetune-argocd-keys", "gitops")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"argocd": {"enabled": True, "namespace": "Argo_CD"}}, "/argocd/namespace"),
        ({"argocd": {"enabled": True, "configMapName": "Argo CM"}}, "/argocd/configMapName"),
        ({"argocd": {"enabled": True, "health": True}}, "additional properties 'health' not allowed"),
    ],
)
def test_bad_argocd_values_are_rejected(tmp_path: Path, values: Obj, message: str) -> None:
    values_file = tmp_path / "bad.yaml"
    values_file.write_text(yaml.safe_dump(values))
    result = subprocess.run(
        [helm(), "template", "kt", str(CHART), "--values", str(values_file)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0, f"accepted {values}"
    assert message in result.stderr, result.stderr
