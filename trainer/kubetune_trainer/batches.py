"""Examples -> token ids -> micro-batches. Pure functions over lists; torch only at the very end.

Label masking (causal-lm): a chat is rendered with the tokenizer's chat template piece by piece, so
each piece is known to be assistant text or not; only assistant pieces carry labels, the rest -100.

    system+user prompt  -> labels -100 ... -100
    assistant answer    -> labels = its token ids (incl. the end-of-turn token, so generation stops)

Packing (causal-lm, training.packing): sequences are laid end to end in one row with position_ids
restarting at 0 for each, and no attention mask. transformers turns such position_ids into a
block-diagonal causal mask (masking_utils.find_packed_sequence_indices), so no token attends across
a boundary; the first label of each sequence is -100 so no loss crosses a boundary either.

    lengths [3, 2] -> input_ids [a0 a1 a2 b0 b1], position_ids [0 1 2 0 1], labels [-100 . . -100 .]
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch

from kubetune_trainer.data import ChatExample, ClassificationExample, Example, PromptCompletionExample
from kubetune_trainer.errors import DataValidationError

IGNORE = -100


@dataclass(frozen=True)
class Tokenized:
    input_ids: list[int]
    labels: list[int] | int  # per-token labels (causal-lm) or the class id (classification)


def render_chat(messages: list[dict[str, str]], tokenizer: Any, add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def chat_segments(messages: tuple[tuple[str, str], ...], tokenizer: Any) -> list[tuple[str, bool]]:
    """The rendered chat cut into (text, is_assistant) pieces whose concatenation is the full render."""
    dicts = [{"role": role, "content": content} for role, content in messages]
    segments: list[tuple[str, bool]] = []
    done = ""
    for i, (role, _) in enumerate(messages):
        if role != "assistant":
            continue
        prompt = render_chat(dicts[:i], tokenizer, add_generation_prompt=True)
        with_answer = render_chat(dicts[: i + 1], tokenizer, add_generation_prompt=False)
        if not (prompt.startswith(done) and with_answer.startswith(prompt)):
            raise DataValidationError(
                "the chat template does not render turns as prefixes of each other; "
                "use task.format prompt-completion for this model"
            )
        segments += [(prompt[len(done) :], False), (with_answer[len(prompt) :], True)]
        done = with_answer
    return [(text, is_answer) for text, is_answer in segments if text]


def tokenize_segments(segments: list[tuple[str, bool]], tokenizer: Any, max_len: int) -> Tokenized:
    ids: list[int] = []
    labels: list[int] = []
    for text, is_answer in segments:
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        labels += piece if is_answer else [IGNORE] * len(piece)
    return Tokenized(ids[:max_len], labels[:max_len])


def tokenize_examples(examples: list[Example], tokenizer: Any, max_len: int) -> list[Tokenized]:
    """Token ids per example, truncated to max_len; a causal example left without answer tokens fails."""
    out = []
    for index, example in enumerate(examples):
        if isinstance(example, ClassificationExample):
            ids = tokenizer(example.text, truncation=True, max_length=max_len)["input_ids"]
            out.append(Tokenized(ids, example.label))
            continue
        if isinstance(example, ChatExample):
            segments = chat_segments(example.messages, tokenizer)
        else:
            assert isinstance(example, PromptCompletionExample)
            segments = [(example.prompt, False), (example.completion + (tokenizer.eos_token or ""), True)]
        tokenized = tokenize_segments(segments, tokenizer, max_len)
        assert isinstance(tokenized.labels, list)
        if all(label == IGNORE for label in tokenized.labels[1:]):
            raise DataValidationError(
                f"example {index}: the prompt fills all {max_len} tokens, no answer "
                "is left to learn; raise training.maxSeqLength or shorten the prompt"
            )
        out.append(tokenized)
    return out


# ---------------------------------------------------------------- order and grouping


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """A shuffled order of 0..n-1 that depends only on (seed, epoch): a resumed run sees the same one."""
    order = list(range(n))
    random.Random(f"{seed}/{epoch}").shuffle(order)
    return order


def fixed_size_groups(order: list[int], batch_size: int) -> list[list[int]]:
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def pack_groups(order: list[int], lengths: list[int], token_budget: int) -> list[list[int]]:
    """Greedy first-fit in the given order: consecutive sequences share a row until the budget is full."""
    groups: list[list[int]] = []
    used = token_budget + 1
    for index in order:
        if used + lengths[index] > token_budget:
            groups.append([])
            used = 0
        groups[-1].append(index)
        used += lengths[index]
    return groups


def pad_to_multiple(items: list[Any], multiple: int) -> list[Any]:
    """Repeat the first items so len is a multiple (DistributedSampler's rule); unchanged for 1."""
    short = -len(items) % multiple
    return items + (items * (short // max(1, len(items)) + 1))[:short]


def epoch_batches(
    seqs: list[Tokenized],
    seed: int,
    epoch: int,
    batch_size: int,
    max_len: int,
    packing: bool,
    rank: int = 0,
    world: int = 1,
) -> list[list[int]]:
    """This rank's micro-batches of one epoch, deterministic in (seed, epoch).

    Every rank builds the same global plan and takes its share, so `world` ranks of `batch_size`
    step through the data exactly like one process with batch_size * world (same steps, same rows per
    step). The plan is padded with its first entries to divide evenly, so no rank ever idles in a
    collective; with one process nothing changes.

        order [5 2 7 0 3 1 6 4], batch 2, world 2 -> global batches [5 2 7 0] [3 1 6 4]
        rank 0: [5 7] [3 6]     rank 1: [2 0] [1 4]
    """
    order = epoch_order(len(seqs), seed, epoch)
    if packing:
        groups = pack_groups(order, [len(s.input_ids) for s in seqs], batch_size * max_len)
        return pad_to_multiple(groups, world)[rank::world]
    global_batches = fixed_size_groups(pad_to_multiple(order, world), batch_size * world)
    return [batch[rank::world] for batch in global_batches]


# ---------------------------------------------------------------- tensors


def padded_batch(seqs: list[Tokenized], indices: list[int], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids + attention_mask; labels are class ids or per-token labels padded with -100."""
    chosen = [seqs[i] for i in indices]
    width = max(len(s.input_ids) for s in chosen)
    ids = torch.full((len(chosen), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(chosen), width), dtype=torch.long)
    for row, s in enumerate(chosen):
        ids[row, : len(s.input_ids)] = torch.tensor(s.input_ids)
        mask[row, : len(s.input_ids)] = 1
    if isinstance(chosen[0].labels, int):
        labels = torch.tensor([s.labels for s in chosen], dtype=torch.long)
    else:
        labels = torch.full((len(chosen), width), IGNORE, dtype=torch.long)
        for row, s in enumerate(chosen):
            labels[row, : len(s.input_ids)] = torch.tensor(s.labels)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def packed_batch(seqs: list[Tokenized], indices: list[int]) -> dict[str, torch.Tensor]:
    """One row of sequences end to end; position_ids restart per sequence (see module docstring)."""
    ids: list[int] = []
    positions: list[int] = []
    labels: list[int] = []
    for i in indices:
        s = seqs[i]
        assert isinstance(s.labels, list)
        ids += s.input_ids
        positions += range(len(s.input_ids))
        labels += [IGNORE, *s.labels[1:]]
    as_row = lambda values: torch.tensor([values], dtype=torch.long)  # noqa: E731
    return {"input_ids": as_row(ids), "position_ids": as_row(positions), "labels": as_row(labels)}


def count_targets(batch: dict[str, torch.Tensor]) -> int:
    """Items the loss averages over: sequences (classification) or shifted answer tokens (causal-lm)."""
    labels = batch["labels"]
    if labels.ndim == 1:
        return int(labels.numel())
    return int((labels[:, 1:] != IGNORE).sum())
