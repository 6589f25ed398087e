"""What a user learns from plain kubectl about our CRDs, served by the real API server: `kubectl
explain` reads the field descriptions of our pydantic models (published as OpenAPI v3 from the CRD
schemas), and `kubectl get ftj` / `kubectl get adep` print the CRDs' printer columns.

No operator runs: the status the columns show is written through the status subresource, playing
the operator's output as a fixture (our own CRs only).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from controlplane import Cluster
from pydantic import BaseModel

from kubetune.api.adapterdeployment import AdapterDeploymentSpec
from kubetune.api.crdgen import adapterdeployment_crd, finetunejob_crd
from kubetune.api.finetunejob import FineTuneJobSpec, LoraSpec

ROOT = Path(__file__).resolve().parents[2]


def squeeze(text: str) -> str:
    """kubectl wraps descriptions at its terminal width: compare words, not line breaks."""
    return re.sub(r"\s+", " ", text).strip()


def explain(cluster: Cluster, path: str) -> str:
    result = cluster.kubectl("explain", path)
    return result.stdout


def field_rows(output: str) -> dict[str, str]:
    """The FIELDS section of `kubectl explain`: field name -> its description (unwrapped)."""
    fields = output.split("\nFIELDS:\n", 1)[1]
    rows: dict[str, str] = {}
    name = None
    for line in fields.splitlines():
        if row := re.match(r"^  (\S+)\t<", line):  # "  name\t<type>"; "  enum: ..." lines follow it
            name = row.group(1)
            rows[name] = ""
        elif name is not None and line.strip():
            rows[name] = squeeze(f"{rows[name]} {line}")
    return rows


def descriptions(model: type[BaseModel]) -> dict[str, str]:
    return {(f.alias or n): squeeze(f.description or "") for n, f in model.model_fields.items()}


@pytest.mark.parametrize(
    ("path", "kind", "parent", "field", "model"),
    [
        ("finetunejob.spec.lora", "FineTuneJob", FineTuneJobSpec, "lora", LoraSpec),
        ("adapterdeployment.spec", "AdapterDeployment", None, "spec", AdapterDeploymentSpec),
    ],
)
def test_kubectl_explain_shows_the_pydantic_field_descriptions(
    cluster: Cluster, path: str, kind: str, parent: type[BaseModel] | None, field: str, model: type[BaseModel]
) -> None:
    out = explain(cluster, path)
    assert re.search(rf"^KIND:\s+{kind}$", out, re.M) and re.search(r"^VERSION:\s+v1alpha1$", out, re.M), out
    assert re.search(rf"^FIELD:\s+{field} <Object>$", out, re.M), out
    if parent is not None:  # the field's own description, from the parent model
        described = squeeze(out.split("DESCRIPTION:", 1)[1].split("FIELDS:", 1)[0])
        assert described == squeeze(parent.model_fields[field].description or ""), out
    want = descriptions(model)
    assert all(want.values()), f"a field of {model.__name__} has no description"
    rows = field_rows(out)
    assert set(rows) == set(want), out
    for name, description in want.items():
        assert description in rows[name], f"{path}.{name}: {rows[name]!r} lacks {description!r}"


def test_kubectl_explain_shows_nested_types_bounds_and_required_fields(cluster: Cluster) -> None:
    out = explain(cluster, "finetunejob.spec.lora.targetModules")
    assert re.search(r"^FIELD:\s+targetModules <\[\]string>$", out, re.M), out
    assert squeeze(LoraSpec.model_fields["target_modules"].description or "") in squeeze(out)
    top = field_rows(explain(cluster, "finetunejob.spec"))
    assert "-required-" in explain(cluster, "finetunejob.spec").split("baseModel", 1)[1].splitlines()[0]
    assert set(top) == set(descriptions(FineTuneJobSpec))


def columns(crd: dict[str, Any], wide: bool = False) -> list[str]:
    """Header names `kubectl get` prints for ``crd``'s printer columns (priority 0, or all with -o wide)."""
    defined = crd["spec"]["versions"][0]["additionalPrinterColumns"]
    return ["NAME", *(c["name"].upper() for c in defined if wide or not c.get("priority"))]


def create(cluster: Cluster, example: str, status: dict[str, Any]) -> str:
    doc = yaml.safe_load((ROOT / "examples" / "k8s" / example).read_text())
    created = cluster.create(doc)
    name = created["metadata"]["name"]
    cluster.patch_status(created["kind"], cluster.ns, name, status)
    return str(name)


def table(cluster: Cluster, *args: str) -> list[list[str]]:
    out = cluster.kubectl("get", *args).stdout
    # Columns are separated by 3+ spaces; a cell never holds more than one space (e.g. "2026-...").
    return [re.split(r"\s{2,}", line.strip()) for line in out.splitlines()]


def test_kubectl_get_ftj_prints_the_printer_columns(cluster: Cluster) -> None:
    name = create(
        cluster,
        "finetunejob-support-intents.yaml",
        {
            "phase": "Running",
            "progress": "40/120",
            "loss": 0.5123,
            "accuracy": 0.9125,
            "message": "step 40/120",
        },
    )
    header, *rows = table(cluster, "ftj")
    assert header == columns(finetunejob_crd())
    assert rows and rows[0][:5] == [name, "Running", "40/120", "0.5123", "0.9125"], rows

    wide_header, *wide_rows = table(cluster, "ftj", "-o", "wide")
    assert wide_header == columns(finetunejob_crd(), wide=True)
    model = yaml.safe_load((ROOT / "examples/k8s/finetunejob-support-intents.yaml").read_text())["spec"][
        "baseModel"
    ]
    assert wide_rows[0][wide_header.index("MODEL")] == model["name"]
    assert wide_rows[0][wide_header.index("MESSAGE")] == "step 40/120"


def test_kubectl_get_adep_prints_the_printer_columns(cluster: Cluster) -> None:
    name = create(
        cluster,
        "adapterdeployment-support-intents.yaml",
        {"phase": "Available", "activeAdapter": {"version": "v3", "accuracy": 0.91}, "readyReplicas": 2},
    )
    header, *rows = table(cluster, "adep")
    assert header == columns(adapterdeployment_crd())
    assert rows and rows[0][:5] == [name, "Available", "v3", "0.91", "2"], rows
