"""`precision: bf16` on the real MiniLM with a real classifier: the server casts base, LoRA and head to
bf16, and its answers on shipped tickets stay those of fp32 (benchmarks/precision_accuracy.py measures
the trained adapters on every shipped ticket).

The classifier is the adapter the trainer's `probe` recipe saves: LoRA on the real base (B = 0, as
training starts it) with the head set from a logistic regression on the shipped train tickets (LP of
LP-FT), so it is a working classifier (20 of these 24 tickets right) and its margins are real ones,
not random noise; one of the 24 is a near-tie (top-2 margin 0.0003) that bf16 may tip either way.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from kubetune_trainer import models
from kubetune_trainer.evaluate import linear_probe
from kubetune_trainer.serve.adapters import AdapterRegistry, ModelSource
from kubetune_trainer.serve.config import AdapterSpec, ServeConfig
from kubetune_trainer.serve.inference import ClassifyRow, classify_rows
from test_serve_helpers import MINILM, loaded_registry

from kubetune.api.finetunejob import LoraSpec, TaskSpec

DATA = Path(__file__).resolve().parents[2] / "examples" / "data" / "support-intents"
TRAIN_PER_LABEL = 12
TICKETS = 24
MAX_TOKENS = 128


def read(name: str) -> list[dict[str, str]]:
    return [json.loads(line) for line in (DATA / name).read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def tickets() -> list[dict[str, str]]:
    return read("validation.jsonl")[:TICKETS]


@pytest.fixture(scope="module")
def labels() -> list[str]:
    return sorted({r["label"] for r in read("train.jsonl")})


@pytest.fixture(scope="module")
def probe_adapter(tmp_path_factory: pytest.TempPathFactory, labels: list[str]) -> Path:
    """LoRA (B = 0) + a head fitted on 12 train tickets per label, saved as the trainer saves it."""
    rows = read("train.jsonl")
    train = [r for label in labels for r in [r for r in rows if r["label"] == label][:TRAIN_PER_LABEL]]
    config = ServeConfig(base_model=MINILM, task="sequence-classification")
    source = ModelSource(
        base_model=MINILM,
        task=TaskSpec(type="sequence-classification"),
        cache_dir=config.cache_dir,
        config=config,
        lora=LoraSpec(r=8, target_modules=["auto"]),
    )
    tokenizer, base = models.load_tokenizer_and_model(source, labels)  # type: ignore[arg-type]
    assert models.classifier_pooling(base) == "mean"
    batch = tokenizer(
        [r["text"] for r in train], return_tensors="pt", padding=True, truncation=True, max_length=MAX_TOKENS
    )
    with torch.inference_mode():
        hidden = base.eval()(**batch, output_hidden_states=True).hidden_states[-1]
    embeddings = models.mean_pool(hidden, batch["attention_mask"]).numpy()
    truth = np.array([labels.index(r["label"]) for r in train])
    probe = linear_probe(embeddings, truth, embeddings, truth, len(labels))
    torch.manual_seed(0)
    model = models.apply_lora(base, source)  # type: ignore[arg-type]
    models.init_head_from_probe(model, probe.coef, probe.intercept, probe.classes)
    folder = tmp_path_factory.mktemp("probe") / "adapter"
    model.save_pretrained(str(folder))
    meta = {"task": "sequence-classification", "labels": labels, "pooling": "mean"}
    (folder / "kubetune.json").write_text(json.dumps(meta))
    return folder


def served(adapter: Path, precision: str, texts: list[str]) -> tuple[AdapterRegistry, np.ndarray]:
    """Load base + adapter as the server does and answer `texts` in one classify batch."""
    config = ServeConfig(
        base_model=MINILM,
        task="sequence-classification",
        precision=precision,  # type: ignore[arg-type]
        max_input_tokens=MAX_TOKENS,
        adapters=[AdapterSpec(name="intents", version="v1", uri=str(adapter))],
    )
    registry = loaded_registry(config)
    rows = [ClassifyRow(registry.resolve("intents"), text) for text in texts]
    classify_rows(registry, rows, MAX_TOKENS)
    assert all(r.error is None for r in rows)
    return registry, np.array([r.probabilities for r in rows])


def test_bf16_classifier_answers_as_fp32(
    probe_adapter: Path, tickets: list[dict[str, str]], labels: list[str]
) -> None:
    texts = [t["text"] for t in tickets]
    truth = np.array([labels.index(t["label"]) for t in tickets])
    fp32_registry, fp32 = served(probe_adapter, "fp32", texts)
    bf16_registry, bf16 = served(probe_adapter, "bf16", texts)

    # The weights really are what `precision` says, adapter and head included.
    assert {p.dtype for p in fp32_registry.model.parameters()} == {torch.float32}
    assert {p.dtype for p in bf16_registry.model.parameters()} == {torch.bfloat16}
    assert any("lora_" in n for n, _ in bf16_registry.model.named_parameters())

    # A real classifier (chance is 3 of 24), so agreement below is not agreement on noise.
    assert (fp32.argmax(1) == truth).sum() >= 18, fp32.argmax(1)
    # bf16 computed something of its own (not the fp32 numbers), yet answers alike:
    diff = np.abs(fp32 - bf16).max()
    assert diff > 0
    assert diff < 0.05, diff  # 0.005 measured
    changed = int((fp32.argmax(1) != bf16.argmax(1)).sum())
    assert changed <= 1, f"bf16 changed {changed} of {len(texts)} predictions"
    assert (bf16.argmax(1) == truth).sum() >= (fp32.argmax(1) == truth).sum() - 1
