"""Tokenization, label masking and padding-free packing, on tiny real tokenizers and models."""

from __future__ import annotations

import string

import pytest
import torch
from kubetune_trainer.batches import (
    IGNORE,
    Tokenized,
    chat_segments,
    count_targets,
    epoch_batches,
    pack_groups,
    packed_batch,
    padded_batch,
    tokenize_examples,
)
from kubetune_trainer.data import ChatExample, ClassificationExample, PromptCompletionExample
from kubetune_trainer.errors import DataValidationError
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def char_tokenizer() -> PreTrainedTokenizerFast:
    """A real fast tokenizer, one token per character, with ChatML special tokens and template."""
    specials = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]
    vocab = {tok: i for i, tok in enumerate(specials + list(string.printable))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        unk_token="<unk>",
        eos_token="<|im_end|>",
        additional_special_tokens=specials[2:],
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def test_chat_segments_mark_only_assistant_turns(char_tokenizer: PreTrainedTokenizerFast) -> None:
    chat = (("system", "S"), ("user", "U1"), ("assistant", "A1"), ("user", "U2"), ("assistant", "A2"))
    segments = chat_segments(chat, char_tokenizer)
    assert [t for t, is_answer in segments if is_answer] == ["A1<|im_end|>\n", "A2<|im_end|>\n"]
    full = char_tokenizer.apply_chat_template([{"role": r, "content": c} for r, c in chat], tokenize=False)
    assert "".join(t for t, _ in segments) == full


def test_labels_cover_assistant_tokens_only(char_tokenizer: PreTrainedTokenizerFast) -> None:
    [tok] = tokenize_examples([ChatExample((("user", "hi"), ("assistant", "ok")))], char_tokenizer, 100)
    assert isinstance(tok.labels, list)
    targets = "".join(char_tokenizer.convert_ids_to_tokens([t for t in tok.labels if t != IGNORE]))
    assert targets == "ok<|im_end|>\n"
    prompt = char_tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    prompt_len = len(char_tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert tok.labels[:prompt_len] == [IGNORE] * prompt_len
    assert tok.labels[prompt_len:] == tok.input_ids[prompt_len:]


def test_prompt_completion_appends_eos(char_tokenizer: PreTrainedTokenizerFast) -> None:
    [tok] = tokenize_examples([PromptCompletionExample("Q:", "A")], char_tokenizer, 100)
    assert tok.input_ids == char_tokenizer("Q:A<|im_end|>", add_special_tokens=False)["input_ids"]
    assert tok.labels == [IGNORE, IGNORE, *tok.input_ids[2:]]


def test_prompt_filling_max_len_is_rejected(char_tokenizer: PreTrainedTokenizerFast) -> None:
    with pytest.raises(DataValidationError, match="example 0: the prompt fills all 5 tokens"):
        tokenize_examples([PromptCompletionExample("long prompt", "A")], char_tokenizer, 5)


def test_classification_truncates_and_keeps_class(char_tokenizer: PreTrainedTokenizerFast) -> None:
    [tok] = tokenize_examples([ClassificationExample("abcdefgh", 3)], char_tokenizer, 4)
    assert len(tok.input_ids) == 4 and tok.labels == 3


def test_pack_groups_fill_budget_in_order() -> None:
    assert pack_groups([0, 1, 2, 3], [3, 2, 4, 1], token_budget=5) == [[0, 1], [2, 3]]
    assert pack_groups([2, 0], [3, 2, 6], token_budget=5) == [[2], [0]]  # an overlong one stands alone


def test_packed_batch_resets_positions_and_masks_boundaries() -> None:
    seqs = [
        Tokenized([11, 12, 13], [IGNORE, 12, 13]),
        Tokenized([21, 22], [IGNORE, 22]),
        Tokenized([31, 32], [31, 32]),
    ]
    batch = packed_batch(seqs, [0, 1, 2])
    assert batch["input_ids"].tolist() == [[11, 12, 13, 21, 22, 31, 32]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1]]
    # the first token of every sequence has no label: nothing is predicted across a boundary
    assert batch["labels"].tolist() == [[IGNORE, 12, 13, IGNORE, 22, IGNORE, 32]]
    assert count_targets(batch) == 4


def test_packing_has_no_cross_contamination() -> None:
    """Logits of a packed row equal those of each sequence run alone (block-diagonal attention)."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    model = LlamaForCausalLM(config).eval()
    seqs = [Tokenized([5, 6, 7, 8], [IGNORE] * 4), Tokenized([9, 10, 11], [IGNORE] * 3)]
    batch = packed_batch(seqs, [0, 1])
    with torch.no_grad():
        packed = model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
        ).logits
        alone = [model(input_ids=torch.tensor([s.input_ids]), use_cache=False).logits for s in seqs]
        naive = model(input_ids=batch["input_ids"], use_cache=False).logits  # no resets: contaminated
    torch.testing.assert_close(packed[0, :4], alone[0][0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(packed[0, 4:], alone[1][0], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(naive[0, 4:], alone[1][0], atol=1e-3)


def test_padded_batch_pads_right_with_ignored_labels() -> None:
    seqs = [Tokenized([1, 2, 3], [IGNORE, 2, 3]), Tokenized([4], [4])]
    batch = padded_batch(seqs, [1, 0], pad_id=0)
    assert batch["input_ids"].tolist() == [[4, 0, 0], [1, 2, 3]]
    assert batch["attention_mask"].tolist() == [[1, 0, 0], [1, 1, 1]]
    assert batch["labels"].tolist() == [[4, IGNORE, IGNORE], [IGNORE, 2, 3]]


def test_epoch_batches_are_deterministic_and_cover_every_example_once() -> None:
    seqs = [Tokenized([1] * (1 + i % 5), 0) for i in range(23)]
    first = epoch_batches(seqs, seed=3, epoch=0, batch_size=4, max_len=8, packing=False)
    assert first == epoch_batches(seqs, seed=3, epoch=0, batch_size=4, max_len=8, packing=False)
    assert first != epoch_batches(seqs, seed=3, epoch=1, batch_size=4, max_len=8, packing=False)
    assert sorted(i for b in first for i in b) == list(range(23))
    packed = epoch_batches(seqs, seed=3, epoch=0, batch_size=2, max_len=8, packing=True)
    assert sorted(i for b in packed for i in b) == list(range(23))
    assert all(sum(len(seqs[i].input_ids) for i in b) <= 16 for b in packed)


def test_ranks_share_the_single_process_plan() -> None:
    """W ranks x batch b step through the same global batches as one process with batch W*b."""
    seqs = [Tokenized(list(range(1 + i % 5)), i % 2) for i in range(11)]
    single = epoch_batches(seqs, seed=3, epoch=0, batch_size=4, max_len=8, packing=False)
    ranks = [epoch_batches(seqs, 3, 0, 2, 8, False, rank=r, world=2) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(single) == 3
    for step, batch in enumerate(single[:-1]):
        assert ranks[0][step] == batch[0::2] and ranks[1][step] == batch[1::2]
    # 11 rows padded to 12: the last global batch holds 4 rows, the first row of the order repeated
    assert sorted(ranks[0][-1] + ranks[1][-1]) == sorted(single[-1] + [single[0][0]])
    packed = [epoch_batches(seqs, 3, 0, 1, 8, True, rank=r, world=2) for r in range(2)]
    assert len(packed[0]) == len(packed[1])
