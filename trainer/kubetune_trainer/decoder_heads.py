"""training.recipe heads: one classification head per answer field on a causal-LM base (LP-FT).

For a causal-lm job whose answers are closed-set (closed_set.AnswerSchema, e.g. the triage tickets'
{"intent", "priority"}), a decoder does not have to spell the answer token by token: the prompt's
pooled hidden state feeds one Linear head per field, and the answer is each head's argmax, rendered
with schema.render, so it is valid by construction and picked the way a classifier would.

    prompt ids (the chat template's prompt with its generation prompt, exactly what generation reads)
       + the answer's lead ("answer" pooling: the text an answer starts with before its first value,
         e.g. `{"intent": "`)
    -> the decoder's first `depth` layers (+ LoRA on the top ones)
    -> the outputs of layers depth-span..depth-1, each through the final norm, pooled and
       L2-normalised -> their mean, L2-normalised
    -> one Linear head per field -> argmax

Pooling: "mean" over the prompt's tokens, the "last" token, or "answer": the mean over the prompt's
tokens beside the state of the lead's last token, where a decoder decides the first value as it would
write it. The two read different things: SmolLM2-135M, the triage tickets, frozen probes on train
(stratified 5-fold x 2 seeds), layers 15-28 averaged: mean 94.8% intent / 93.3% priority, the lead's
last token 93.5% / 88.4%, both side by side 96.3% / 93.1% (the prompt's own last token beside the
mean instead: 94.0% / 93.4%; a mean over only the tokens after the shared system message: no change)
-- benchmarks/TRIAGE_HEADS_RESULTS.md.

(depth, span) is chosen per job (heads_recipe.read_depth) by 5-fold cross-validated frozen probes on
the training rows, never on validation: a decoder's last layer is shaped for predicting the next
token, and its middle layers, averaged, carry more of a ticket's meaning (SmolLM2-135M, the triage
tickets, cross-validated on train: last layer alone 93.3% mean field accuracy, layers 15-30 averaged
94.7%; benchmarks/TRIAGE_HEADS_RESULTS.md). Layers above `depth` never run, in training or serving.

LP-FT as on the encoder path (models.init_head_from_probe): each head starts as the logistic
regression fitted on the frozen base's pooled embeddings (the same input), then LoRA and heads are
trained together with the summed per-field cross-entropy. Trainer, evaluation and server all answer
through `predict`, so a served answer is the evaluated one.

The adapter folder holds the LoRA (peft, CAUSAL_LM, so a causal-lm server loads it as usual) plus
heads.safetensors and kubetune.json "heads" {pooling, depth, span, lead, schema}.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from kubetune_trainer.closed_set import AnswerSchema, Value

Pooling = Literal["mean", "last", "answer"]
POOLINGS: tuple[Pooling, ...] = ("mean", "last", "answer")
HEADS_FILE = "heads.safetensors"
BATCH = 16
PROBE_C = 1.0  # inverse L2 strength of the probes that choose the layers read (cross_validated_accuracy)
# The LP head's inverse L2 strengths, one chosen per field by cross-validated log-loss (head_probe).
HEAD_CS = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
HEAD_FOLDS = 5


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: Pooling, lead: int = 0) -> torch.Tensor:
    """The L2-normalised mean of the real tokens' states, or the last real token's state (right padding);
    "answer": the mean over all but the last `lead` real tokens (the prompt without the answer's lead)
    beside the last real token's state, each normalised (twice the width).

    >>> h = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [9.0, 9.0]]]); m = torch.tensor([[1, 1, 0]])
    >>> pool(h, m, "last").tolist(), [round(x, 4) for x in pool(h, m, "mean")[0].tolist()]
    ([[0.0, 1.0]], [0.7071, 0.7071])
    >>> pool(h, m, "answer", lead=1).tolist()
    [[1.0, 0.0, 0.0, 1.0]]
    """
    if pooling == "answer":
        real = mask.sum(1, keepdim=True)
        positions = torch.arange(mask.size(1), device=mask.device).unsqueeze(0)
        prompt = mask * (positions < (real - lead).clamp(min=1))
        return torch.cat([pool(hidden, prompt, "mean"), pool(hidden, mask, "last")], -1)
    if pooling == "last":
        picked = hidden[torch.arange(hidden.size(0)), mask.sum(1) - 1]
    else:
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        picked = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
    return F.normalize(picked.float(), dim=-1)


@contextmanager
def layer_range(body: Any, first: int, stop: int) -> Iterator[None]:
    """The transformer body runs only its layers first..stop-1 (it loops over self.layers; its final
    norm still applies)."""
    every = body.layers
    body.layers = torch.nn.ModuleList(every[first:stop])
    try:
        yield
    finally:
        body.layers = every


@contextmanager
def captured(body: Any, layers: Sequence[int]) -> Iterator[dict[int, torch.Tensor]]:
    """The outputs of the body's layers `layers` (indices into the whole stack) while it runs."""
    outputs: dict[int, torch.Tensor] = {}
    hooks = [
        body.layers[k].register_forward_hook(
            lambda m, args, out, k=k: outputs.__setitem__(k, out[0] if isinstance(out, tuple) else out)
        )
        for k in layers
    ]
    try:
        yield outputs
    finally:
        for hook in hooks:
            hook.remove()


def pooled_width(hidden_size: int, pooling: Pooling) -> int:
    """The width of a pooled embedding: "answer" puts two states side by side."""
    return 2 * hidden_size if pooling == "answer" else hidden_size


def pooled_sum(
    body: Any, outputs: dict[int, torch.Tensor], mask: torch.Tensor, pooling: Pooling, lead: int = 0
) -> torch.Tensor:
    """Sum over the captured layers of each one's output through the body's final norm, pooled and
    L2-normalised (zeros when none is captured)."""
    width = pooled_width(body.norm.weight.numel(), pooling)
    total = torch.zeros(mask.size(0), width, device=mask.device)
    for out in outputs.values():
        total = total + layer_pooled(body, out, mask, pooling, lead)
    return total


def layer_pooled(
    body: Any, out: torch.Tensor, mask: torch.Tensor, pooling: Pooling, lead: int = 0
) -> torch.Tensor:
    """What one read layer contributes: its output through the body's final norm, pooled, normalised."""
    return pool(body.norm(out), mask, pooling, lead)


def with_lead(ids: Sequence[Sequence[int]], lead: Sequence[int]) -> list[list[int]]:
    """Each prompt's ids followed by the answer's lead (what "answer" pooling reads the end of)."""
    return [[*row, *lead] for row in ids]


class FieldHeads(torch.nn.Module):
    """A decoder (a peft LoRA model, or a plain base) read at its layers depth-span..depth-1 (their
    pooled, normalised outputs averaged; depth None: all layers, span 1: the last read layer only),
    plus one Linear head per answer field. `lead`: the answer lead's token ids ("answer" pooling),
    which the list-of-prompts entry points (embeddings, predict, trunk_inputs) append to each prompt;
    embed/forward take prompts that already end with it."""

    def __init__(
        self,
        decoder: Any,
        schema: AnswerSchema,
        pooling: Pooling,
        depth: int | None = None,
        span: int = 1,
        lead: Sequence[int] = (),
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling {pooling!r}: one of {', '.join(POOLINGS)}")
        if lead and pooling != "answer":
            raise ValueError(f"an answer lead is read by pooling 'answer' only, not {pooling!r}")
        self.decoder, self.schema, self.pooling = decoder, schema, pooling
        self.lead = tuple(int(t) for t in lead)
        vocabulary = backbone(decoder).config.vocab_size
        if any(not 0 <= t < vocabulary for t in self.lead):
            raise ValueError(
                f"answer lead {list(self.lead)} has ids outside the vocabulary (0..{vocabulary - 1})"
            )
        total = len(backbone(decoder).model.layers)
        if depth is not None and not 1 <= depth <= total:
            raise ValueError(f"depth {depth} outside 1..{total} (the decoder's layers)")
        self.depth = total if depth is None else depth
        if not 1 <= span <= self.depth:
            raise ValueError(f"span {span} outside 1..{self.depth} (the layers up to depth)")
        self.span = span
        width = pooled_width(backbone(decoder).config.hidden_size, pooling)
        self.heads = torch.nn.ModuleList(torch.nn.Linear(width, len(f.values)) for f in schema.fields)

    @property
    def read_layers(self) -> list[int]:
        return list(range(self.depth - self.span, self.depth))

    def inputs(self, ids: Sequence[Sequence[int]]) -> list[list[int]]:
        """The prompts as this model reads them: each followed by the answer's lead (if any)."""
        return with_lead(ids, self.lead)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # The transformer body only: the lm_head's vocabulary-wide logits are never needed here.
        body = backbone(self.decoder).model
        with captured(body, self.read_layers) as outputs, layer_range(body, 0, self.depth):
            body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return F.normalize(pooled_sum(body, outputs, attention_mask, self.pooling, len(self.lead)), dim=-1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
        pooled = self.embed(input_ids, attention_mask)
        return [head(pooled) for head in self.heads]

    def forward_top(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        first: int,
        below: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """The same answer as forward() from `hidden`, the (cached) input of decoder layer `first`, and
        `below`, the (cached) pooled_sum of the read layers under `first`: only layers first..depth-1
        run, which is exact when no LoRA sits below `first` (top_layers; trunk_inputs caches both)."""
        body = backbone(self.decoder).model
        above = [k for k in self.read_layers if k >= first]
        with captured(body, above) as outputs, layer_range(body, first, self.depth):
            body(inputs_embeds=hidden, attention_mask=attention_mask, use_cache=False)
        summed = pooled_sum(body, outputs, attention_mask, self.pooling, len(self.lead))
        pooled = F.normalize(summed if below is None else summed + below, dim=-1)
        return [head(pooled) for head in self.heads]


def top_layers(decoder: Any, count: int, depth: int | None = None) -> list[int]:
    """The indices of the last `count` of the first `depth` (None: all) decoder layers: where the heads
    recipe puts its LoRA, so the frozen trunk below runs once per row (trunk_inputs) instead of once
    per step."""
    total = len(backbone(decoder).model.layers) if depth is None else depth
    return list(range(max(0, total - count), total))


def read_candidates(total: int) -> list[tuple[int, int]]:
    """The (depth, span) pairs choose_reading tries: depths from every layer down to half of them,
    every other one, each read alone (span 1) or averaged with the layers down to half its depth.

    >>> read_candidates(8)
    [(8, 1), (8, 4), (6, 1), (6, 3), (4, 1), (4, 2)]
    >>> read_candidates(1)
    [(1, 1)]
    """
    depths = range(total, max(1, total // 2) - 1, -2)
    return [(d, s) for d in depths for s in sorted({1, max(1, d // 2)})]


@torch.no_grad()
def pooled_by_layer(
    decoder: Any,
    ids: Sequence[Sequence[int]],
    pad_id: int,
    pooling: Pooling,
    layers: Sequence[int],
    lead: Sequence[int] = (),
) -> dict[int, np.ndarray]:
    """One frozen pass: each layer's output for each prompt (+ the answer's lead), through the body's
    final norm, pooled and L2-normalised (what FieldHeads sums over its read layers)."""
    ids = with_lead(ids, lead)
    body = backbone(decoder).model
    body.eval()
    device = next(body.parameters()).device
    rows: dict[int, list[torch.Tensor]] = {k: [] for k in layers}
    for i in range(0, len(ids), BATCH):
        batch = right_padded(ids[i : i + BATCH], pad_id, device)
        with captured(body, layers) as outputs, layer_range(body, 0, max(layers) + 1):
            body(**batch, use_cache=False)
        for k in layers:
            rows[k].append(layer_pooled(body, outputs[k], batch["attention_mask"], pooling, len(lead)).cpu())
    return {k: torch.cat(r).numpy() for k, r in rows.items()}


def read_features(by_layer: dict[int, np.ndarray], depth: int, span: int) -> np.ndarray:
    """What FieldHeads(depth=, span=).embed returns, from pooled_by_layer's per-layer rows."""
    summed = sum(by_layer[k] for k in range(depth - span, depth))
    return summed / np.linalg.norm(summed, axis=1, keepdims=True)


def cross_validated_accuracy(x: np.ndarray, targets: Sequence[np.ndarray], folds: int, seed: int) -> float:
    """The mean over fields and `folds` seeded folds of a standardised logistic probe's held-out accuracy
    (unknown values, -1, left out of each fit and counted wrong)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import KFold

    scores = []
    for fit, held in KFold(folds, shuffle=True, random_state=seed).split(x):
        mean, sd = x[fit].mean(0), x[fit].std(0) + 1e-6
        for y in targets:
            known = fit[y[fit] >= 0]
            probe = LogisticRegression(max_iter=2000, C=PROBE_C).fit((x[known] - mean) / sd, y[known])
            scores.append(float((probe.predict((x[held] - mean) / sd) == y[held]).mean()))
    return float(np.mean(scores))


def choose_reading(scores: dict[tuple[int, int], float]) -> tuple[int, int]:
    """The (depth, span) whose probe scored best; a tie goes to the shallower, then the narrower.

    >>> choose_reading({(30, 1): 0.9, (24, 12): 0.93, (20, 1): 0.93})
    (20, 1)
    """
    return min(scores, key=lambda r: (-scores[r], r))


@torch.no_grad()
def trunk_inputs(
    model: FieldHeads, ids: Sequence[Sequence[int]], pad_id: int, first: int
) -> tuple[list[torch.Tensor], np.ndarray, torch.Tensor]:
    """One frozen pass: each prompt's input to layer `first` (its real tokens, the answer's lead
    included), its pooled embedding (the probes' input) and the pooled_sum of its read layers under
    `first` (forward_top's `below`: those layers never change while LoRA trains above them)."""
    ids = model.inputs(ids)
    model.eval()
    device = next(model.parameters()).device
    body = backbone(model.decoder).model
    caught: list[torch.Tensor] = []
    hook = body.layers[first].register_forward_pre_hook(
        lambda m, args, kwargs: caught.append(args[0] if args else kwargs["hidden_states"]), with_kwargs=True
    )
    cached: list[torch.Tensor] = []
    pooled, below = [], []
    try:
        for i in range(0, len(ids), BATCH):
            chunk = ids[i : i + BATCH]
            batch = right_padded(chunk, pad_id, device)
            with captured(body, [k for k in model.read_layers if k < first]) as outputs:
                pooled.append(model.embed(**batch).cpu())
            mask = batch["attention_mask"]
            below.append(pooled_sum(body, outputs, mask, model.pooling, len(model.lead)).cpu())
            hidden = caught.pop()
            cached += [hidden[j, : len(row)].cpu() for j, row in enumerate(chunk)]
    finally:
        hook.remove()
    return cached, torch.cat(pooled).numpy(), torch.cat(below)


def padded_hidden(rows: Sequence[torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    width = max(r.size(0) for r in rows)
    hidden = torch.zeros(len(rows), width, rows[0].size(1))
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        hidden[i, : r.size(0)], mask[i, : r.size(0)] = r, 1
    return {"hidden": hidden.to(device), "attention_mask": mask.to(device)}


def backbone(decoder: Any) -> Any:
    """The *ForCausalLM model under a peft wrapper (LoRA layers are injected in place, so its body
    runs with the adapter)."""
    return decoder.base_model.model if hasattr(decoder, "peft_config") else decoder


def token_ids(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """The prompt ids as generation sees them (no special tokens added: the chat template has them)."""
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def right_padded(ids: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    width = max(len(i) for i in ids)
    return {
        "input_ids": torch.tensor([[*i, *[pad_id] * (width - len(i))] for i in ids], device=device),
        "attention_mask": torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids], device=device),
    }


@torch.no_grad()
def embeddings(model: FieldHeads, ids: Sequence[Sequence[int]], pad_id: int) -> np.ndarray:
    """The pooled, normalised embedding of each prompt: what the heads read."""
    ids = model.inputs(ids)
    model.eval()
    device = next(model.parameters()).device
    rows = [
        model.embed(**right_padded(ids[i : i + BATCH], pad_id, device)) for i in range(0, len(ids), BATCH)
    ]
    return torch.cat(rows).cpu().numpy()


def init_from_probes(model: FieldHeads, emb: np.ndarray, targets: Sequence[np.ndarray]) -> None:
    """LP of LP-FT: each head becomes the logistic regression fitted on the frozen, standardised
    embeddings, with the standardisation folded into the Linear (W/sd, b - W/sd . mean), so the head
    reads the pooled embedding as is. Standardising matters on a decoder: every prompt shares the
    chat template and system message, so the raw pooled states differ in a few directions only.
    Rows with an unknown value (-1) are left out of their field's fit."""
    mean, sd = emb.mean(0), emb.std(0) + 1e-6
    standard = (emb - mean) / sd
    for head, y in zip(model.heads, targets, strict=True):
        known = y >= 0
        probe = head_probe(standard[known], y[known])
        coef, intercept, classes = probe.coef_ / sd, probe.intercept_, probe.classes_
        intercept = intercept - coef @ mean
        if coef.shape[0] == 1:  # two classes: sklearn's sigmoid is the softmax of (-z/2, +z/2)
            coef = np.vstack([-coef / 2, coef / 2])
            intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
        weight = np.zeros(tuple(head.weight.shape), dtype=np.float32)
        bias = np.full(head.out_features, -20.0, dtype=np.float32)  # values never seen: never chosen
        weight[classes], bias[classes] = coef, intercept
        with torch.no_grad():
            head.weight.copy_(torch.from_numpy(weight))
            head.bias.copy_(torch.from_numpy(bias))


def head_probe(x: np.ndarray, y: np.ndarray) -> Any:
    """The LP head of one field: a logistic regression whose L2 strength (HEAD_CS) is chosen by
    cross-validated log-loss, i.e. the best-calibrated head, not the one that separates the training
    rows: a few hundred rows in hundreds of dimensions are always separable, and a weakly regularised
    head then reaches a cross-entropy near zero, leaving the FT stage no gradient (SmolLM2 triage:
    0.007 at C = 1 from the first step). Too few rows of some value to cross-validate: the middle C."""
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV

    counts = np.unique(y, return_counts=True)[1]
    folds = min(HEAD_FOLDS, int(counts.min()) if len(counts) else 0)
    if folds < 2 or len(counts) < 2:
        return LogisticRegression(max_iter=2000, C=HEAD_CS[len(HEAD_CS) // 2]).fit(x, y)
    return LogisticRegressionCV(
        Cs=list(HEAD_CS),
        cv=folds,
        scoring="neg_log_loss",
        max_iter=2000,
        l1_ratios=(0.0,),  # L2 only
        use_legacy_attributes=False,
    ).fit(x, y)


def heads_loss(logits: Sequence[torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
    """Summed over fields, mean over rows, of the cross-entropy; -1 targets are ignored."""
    return sum(
        (F.cross_entropy(z.float(), targets[:, i], ignore_index=-1) for i, z in enumerate(logits)),
        start=torch.zeros((), device=targets.device),
    )


@dataclass(frozen=True)
class HeadsTraining:
    steps: int
    batch_size: int
    learning_rate: float
    warmup_ratio: float
    seed: int


def train_heads(
    model: FieldHeads,
    cached: Sequence[torch.Tensor],
    first: int,
    targets: Sequence[np.ndarray],
    training: HeadsTraining,
    on_step: Any = None,
    checkpoints: Any = None,
    below: torch.Tensor | None = None,
) -> list[float]:
    """LoRA (on layers first..) + heads from the trunk's cached outputs (trunk_inputs: `cached` and
    `below`), AdamW with the
    trainer's warm-up + cosine schedule; returns the loss per step. `checkpoints`
    (heads_checkpoint.HeadsCheckpoints) resumes from the newest checkpoint and writes new ones."""
    from kubetune_trainer.train import build_scheduler

    device = next(model.parameters()).device
    y = torch.from_numpy(np.stack(targets, 1)).long()
    per_epoch = math.ceil(len(cached) / training.batch_size)
    total = training.steps
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=training.learning_rate, weight_decay=0.0)
    scheduler = build_scheduler(optimizer, total, training.warmup_ratio)
    generator = torch.Generator().manual_seed(training.seed)
    losses: list[float] = []
    model.train()
    order = torch.randperm(len(cached), generator=generator)
    resumed = 0
    if checkpoints is not None:  # heads_checkpoint.py: restores the state above in place
        resumed, order = checkpoints.resume(model, optimizer, scheduler, generator, losses, order)
    for step in range(resumed, total):
        start = (step % per_epoch) * training.batch_size
        if step and start == 0:
            order = torch.randperm(len(cached), generator=generator)
        rows = order[start : start + training.batch_size].tolist()
        batch = padded_hidden([cached[i] for i in rows], device)
        under = below[rows].to(device) if below is not None else None
        loss = heads_loss(
            model.forward_top(batch["hidden"], batch["attention_mask"], first, under), y[rows].to(device)
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        losses.append(float(loss.item()))
        if on_step is not None:
            on_step(step + 1, total, losses[-1], scheduler.get_last_lr()[0])
        if checkpoints is not None:  # heads_checkpoint.py: checkpoint when due, Preempted on SIGTERM
            checkpoints.after_step(step + 1, total, model, optimizer, scheduler, generator, order, losses)
    model.eval()
    return losses


@dataclass(frozen=True)
class HeadsAnswer:
    values: tuple[Value, ...]
    text: str  # schema.render(values): the JSON object (or plain label) the server answers
    probabilities: tuple[tuple[float, ...], ...]  # per field, over field.values


@torch.no_grad()
def predict(model: FieldHeads, ids: Sequence[Sequence[int]], pad_id: int) -> list[HeadsAnswer]:
    """Each field's argmax for each prompt, rendered as the answer text: the one function evaluation
    and serving call, on the same prompt ids (the rendered chat prompt, or the completion prompt)."""
    return predict_and_embed(model, ids, pad_id)[0]


@torch.no_grad()
def predict_and_embed(
    model: FieldHeads, ids: Sequence[Sequence[int]], pad_id: int
) -> tuple[list[HeadsAnswer], np.ndarray]:
    """predict(), plus the pooled embedding each answer was read from (the drift reference)."""
    ids = model.inputs(ids)
    model.eval()
    device = next(model.parameters()).device
    answers: list[HeadsAnswer] = []
    pooled_rows = []
    for i in range(0, len(ids), BATCH):
        pooled = model.embed(**right_padded(ids[i : i + BATCH], pad_id, device))
        pooled_rows.append(pooled.cpu())
        probs = [head(pooled).float().softmax(-1).cpu() for head in model.heads]
        for row in range(probs[0].size(0)):
            values = tuple(
                f.values[int(p[row].argmax())] for f, p in zip(model.schema.fields, probs, strict=True)
            )
            answers.append(
                HeadsAnswer(values, model.schema.render(values), tuple(tuple(p[row].tolist()) for p in probs))
            )
    return answers, torch.cat(pooled_rows).numpy()


def field_targets(schema: AnswerSchema, answers: Sequence[str]) -> list[np.ndarray]:
    """Per field, each answer's value index (-1: missing or unknown); llm_baseline's encoding."""
    from kubetune_trainer.llm_baseline import field_labels

    return field_labels(schema, answers)


# ---------------------------------------------------------------- the adapter folder


def save_heads(model: FieldHeads, folder: Path) -> dict[str, Any]:
    """heads.safetensors beside the LoRA; returns kubetune.json's "heads" entry."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {
        f"{i}.{name}": t.detach().float().cpu().contiguous()
        for i, head in enumerate(model.heads)
        for name, t in head.state_dict().items()
    }
    save_file(tensors, str(folder / HEADS_FILE))
    return {
        "pooling": model.pooling,
        "depth": model.depth,
        "span": model.span,
        "lead": list(model.lead),
        "schema": model.schema.wire(),
        "input": "prompt",
    }


def load_heads(decoder: Any, folder: Path, meta: dict[str, Any]) -> FieldHeads:
    """FieldHeads over `decoder` (with the adapter's LoRA already active) from an adapter folder."""
    from safetensors.torch import load_file

    entry = meta["heads"]
    model = FieldHeads(
        decoder,
        AnswerSchema.from_wire(entry["schema"]),
        entry["pooling"],
        entry.get("depth"),
        entry.get("span", 1),
        entry.get("lead", ()),
    )
    tensors = load_file(str(folder / HEADS_FILE))
    for i, head in enumerate(model.heads):
        head.load_state_dict({name: tensors[f"{i}.{name}"] for name in ("weight", "bias")})
    device = next(decoder.parameters()).device
    return model.to(device).eval()


def read_heads_meta(folder: Path) -> dict[str, Any] | None:
    """kubetune.json's "heads" entry, or None for an adapter that answers by generation."""
    path = folder / "kubetune.json"
    meta = json.loads(path.read_text()) if path.is_file() else {}
    return meta if "heads" in meta and (folder / HEADS_FILE).is_file() else None
