"""The adapter digest (artifacts.adapter_digest) covers every file a server reads from the folder, so
a heads adapter whose heads.safetensors or kubetune.json was changed, cut short or left behind is
refused like one whose LoRA weights were (serve/adapters.verified_digest). Real files, real heads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from kubetune_trainer import decoder_heads as dh
from kubetune_trainer.artifacts import ADAPTER_FILES, adapter_digest, adapter_manifest, file_digest
from kubetune_trainer.serve.adapters import WEIGHTS, verified_digest
from kubetune_trainer.serve.closed_answers import field_heads
from kubetune_trainer.serve.config import AdapterSpec
from kubetune_trainer.serve.errors import AdapterDigestError, AdapterLoadError
from test_decoder_heads import SCHEMA, rows, tiny_llama


@pytest.fixture
def heads_folder(tmp_path: Path) -> Path:
    """An adapter folder as the heads recipe leaves it: peft's files, kubetune.json, heads."""
    folder = tmp_path / "adapter"
    ids, targets = rows()
    model = dh.FieldHeads(tiny_llama(), SCHEMA, "mean")
    dh.init_from_probes(model, dh.embeddings(model, ids, 0), targets)
    entry = dh.save_heads(model, folder)
    (folder / "adapter_config.json").write_text(json.dumps({"task_type": "CAUSAL_LM", "r": 4}))
    (folder / WEIGHTS).write_bytes(b"lora weights stand-in")
    (folder / "kubetune.json").write_text(json.dumps({"task": "causal-lm", "heads": entry}))
    return folder


def spec(folder: Path, digest: str) -> AdapterSpec:
    return AdapterSpec(name="triage", version="v1", uri=str(folder), digest=digest)


def test_the_digest_covers_every_served_file(heads_folder: Path) -> None:
    recorded = adapter_digest(heads_folder)
    assert recorded.startswith("sha256:") and len(recorded) == 71
    lines = adapter_manifest(heads_folder).splitlines()
    assert [line.split()[0] for line in lines] == list(ADAPTER_FILES) and dh.HEADS_FILE in ADAPTER_FILES
    copy = heads_folder.parent / "copy"
    shutil.copytree(heads_folder, copy)
    assert adapter_digest(copy) == recorded  # where the folder lives does not matter
    for name in ADAPTER_FILES:
        original = (copy / name).read_bytes()
        (copy / name).write_bytes(original[:-1])  # half copied
        assert adapter_digest(copy) != recorded, name
        (copy / name).unlink()  # left behind
        assert adapter_digest(copy) != recorded, name
        (copy / name).write_bytes(original)
    assert adapter_digest(copy) == recorded


def test_a_tampered_heads_file_is_refused_though_the_lora_is_untouched(heads_folder: Path) -> None:
    recorded = adapter_digest(heads_folder)
    weights = file_digest(heads_folder / WEIGHTS)
    assert verified_digest(spec(heads_folder, recorded), heads_folder) == recorded
    heads = heads_folder / dh.HEADS_FILE
    tensors = bytearray(heads.read_bytes())
    tensors[-1] ^= 0x01  # one bit of one head weight
    heads.write_bytes(bytes(tensors))
    assert file_digest(heads_folder / WEIGHTS) == weights
    with pytest.raises(AdapterDigestError, match=f"expected digest {recorded}, found sha256:"):
        verified_digest(spec(heads_folder, recorded), heads_folder)
    # a weights-only digest (what older trainers recorded) never vouches for a heads adapter
    with pytest.raises(AdapterDigestError):
        verified_digest(spec(heads_folder, weights), heads_folder)


def test_a_weights_only_digest_still_serves_an_adapter_without_heads(heads_folder: Path) -> None:
    (heads_folder / dh.HEADS_FILE).unlink()
    (heads_folder / "kubetune.json").write_text(json.dumps({"task": "causal-lm"}))
    legacy = file_digest(heads_folder / WEIGHTS)
    assert verified_digest(spec(heads_folder, legacy), heads_folder) == adapter_digest(heads_folder)
    (heads_folder / WEIGHTS).write_bytes(b"other weights")
    with pytest.raises(AdapterDigestError):
        verified_digest(spec(heads_folder, legacy), heads_folder)


def test_heads_named_but_missing_refuse_the_adapter(heads_folder: Path) -> None:
    assert field_heads("triage@v1", tiny_llama(), heads_folder) is not None
    (heads_folder / dh.HEADS_FILE).unlink()
    with pytest.raises(AdapterLoadError, match=r"names answer heads but heads\.safetensors is missing"):
        field_heads("triage@v1", tiny_llama(), heads_folder)
