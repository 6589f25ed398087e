"""The hostile and careless corpus (tests/data/bad), offline: every manifest is refused by the
generated CRD schema with the message its ``# expect:`` lines name, and by the pydantic model that
generated it; every example under examples/ is still accepted by both.

tests/integration/test_bad_corpus_real.py applies the same corpus to the real kube-apiserver.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from crd_admission import admit
from pydantic import BaseModel, ValidationError

from kubetune.api.adapterdeployment import AdapterDeployment
from kubetune.api.crdgen import all_crds
from kubetune.api.finetunejob import FineTuneJob

ROOT = Path(__file__).resolve().parents[2]
CORPUS = sorted((ROOT / "tests" / "data" / "bad").glob("*.yaml"))
EXAMPLES = sorted((ROOT / "examples").rglob("*.yaml"))
CRDS = {crd["spec"]["names"]["kind"]: crd for crd in all_crds().values()}
MODELS: dict[str, type[BaseModel]] = {"FineTuneJob": FineTuneJob, "AdapterDeployment": AdapterDeployment}


def expected_messages(path: Path) -> list[str]:
    return [
        line.removeprefix("# expect: ")
        for line in path.read_text().splitlines()
        if line.startswith("# expect: ")
    ]


def kubetune_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc and doc.get("kind") in CRDS]


def test_corpus_is_large_covers_both_kinds_and_names_every_expectation() -> None:
    kinds = [yaml.safe_load(path.read_text())["kind"] for path in CORPUS]
    assert len(CORPUS) >= 60
    assert kinds.count("FineTuneJob") >= 20 and kinds.count("AdapterDeployment") >= 20
    assert all(expected_messages(path) for path in CORPUS), "every bad manifest names its expected message"


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_schema_refuses_the_manifest_with_its_message(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())

    verdict = admit(doc, CRDS[doc["kind"]])

    assert not verdict.accepted
    for message in expected_messages(path):
        assert message in verdict.text


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_pydantic_model_refuses_the_manifest_too(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())

    with pytest.raises(ValidationError):
        MODELS[doc["kind"]].model_validate(doc)


def test_examples_hold_kubetune_manifests_of_both_kinds() -> None:
    kinds = {doc["kind"] for path in EXAMPLES for doc in kubetune_documents(path)}
    assert kinds == {"FineTuneJob", "AdapterDeployment"}
    assert any("argocd" in path.parts for path in EXAMPLES)


@pytest.mark.parametrize("path", EXAMPLES, ids=[str(p.relative_to(ROOT / "examples")) for p in EXAMPLES])
def test_examples_are_still_accepted(path: Path) -> None:
    for doc in kubetune_documents(path):
        verdict = admit(doc, CRDS[doc["kind"]])

        assert verdict.accepted, verdict.text
        MODELS[doc["kind"]].model_validate(doc)
