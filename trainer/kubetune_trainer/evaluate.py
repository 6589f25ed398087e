"""Score a model on validation data: before training (adapter off), after, and a linear-probe baseline.

Classification: accuracy, macro-F1, confusion matrix. Causal LM: loss/perplexity, and when the answers
are JSON objects with an "intent" (the triage task): JSON validity and intent exact-match of greedy
generations. Each evaluation also returns what the drift reference statistics are built from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from kubetune_trainer.batches import IGNORE, Tokenized, packed_batch, padded_batch, render_chat
from kubetune_trainer.closed_set import AnswerSchema, choose_answers, field_accuracy, parse_json_object
from kubetune_trainer.data import ChatExample, Example, PromptCompletionExample
from kubetune_trainer.models import mean_pool

EVAL_BATCH = 32
GEN_BATCH = 16


@dataclass
class Evaluation:
    metrics: dict[str, float]
    confusion_matrix: list[list[int]] | None = None
    predicted: list[str] = field(default_factory=list)  # predicted label per row (drift reference)
    confidence: list[float] = field(default_factory=list)
    embeddings: np.ndarray | None = None  # mean-pooled last hidden state per row
    lengths: list[int] = field(default_factory=list)
    probabilities: np.ndarray | None = None  # classification: softmax per row (temperature.calibrate)


# ---------------------------------------------------------------- classification


@torch.no_grad()
def classify(
    model: Any, seqs: list[Tokenized], pad_id: int, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities and mean-pooled embeddings, in row order."""
    model.eval()
    probs, embeddings = [], []
    for start in range(0, len(seqs), EVAL_BATCH):
        batch = padded_batch(seqs, list(range(start, min(start + EVAL_BATCH, len(seqs)))), pad_id)
        out = model(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            output_hidden_states=True,
        )
        probs.append(out.logits.float().softmax(-1).cpu())
        embeddings.append(mean_pool(out.hidden_states[-1].float(), batch["attention_mask"].to(device)).cpu())
    return torch.cat(probs).numpy(), torch.cat(embeddings).numpy()


def classification_metrics(
    predicted: np.ndarray, truth: np.ndarray, n_labels: int
) -> tuple[dict[str, float], list[list[int]]]:
    from sklearn.metrics import confusion_matrix, f1_score

    metrics = {
        "accuracy": float((predicted == truth).mean()),
        "macro_f1": float(
            f1_score(truth, predicted, average="macro", labels=list(range(n_labels)), zero_division=0)
        ),
    }
    return metrics, confusion_matrix(truth, predicted, labels=list(range(n_labels))).tolist()


def evaluate_classifier(
    model: Any, seqs: list[Tokenized], labels: list[str], pad_id: int, device: torch.device
) -> Evaluation:
    probs, embeddings = classify(model, seqs, pad_id, device)
    predicted = probs.argmax(-1)
    truth = np.array([s.labels for s in seqs])
    metrics, matrix = classification_metrics(predicted, truth, len(labels))
    return Evaluation(
        metrics,
        matrix,
        [labels[i] for i in predicted],
        probs.max(-1).tolist(),
        embeddings,
        [len(s.input_ids) for s in seqs],
        probs,
    )


def accuracy_per_language(correct: list[bool], languages: list[str | None]) -> dict[str, float]:
    """accuracy_language_<language> for the rows that carry a language (none when no row does).

    >>> accuracy_per_language([True, False, True], ["en", "es-en", None])
    {'accuracy_language_en': 1.0, 'accuracy_language_es-en': 0.0}
    """
    out: dict[str, list[bool]] = {}
    for ok, language in zip(correct, languages, strict=True):
        if language is not None:
            out.setdefault(language, []).append(ok)
    return {f"accuracy_language_{lang}": float(np.mean(oks)) for lang, oks in sorted(out.items())}


@dataclass
class Probe:
    """A fitted linear probe: its validation metrics and its weights (sklearn layout)."""

    metrics: dict[str, float]
    coef: np.ndarray
    intercept: np.ndarray
    classes: np.ndarray


def linear_probe(
    train_embeddings: np.ndarray,
    train_labels: np.ndarray,
    val_embeddings: np.ndarray,
    val_labels: np.ndarray,
    n_labels: int,
) -> Probe:
    """Logistic regression on frozen, L2-normalised mean-pooled embeddings: the cheap baseline an
    adapter has to beat, and (LP-FT) the starting point of the classification head."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import normalize

    probe = LogisticRegression(max_iter=2000, C=10.0)
    probe.fit(normalize(train_embeddings), train_labels)
    metrics, _ = classification_metrics(probe.predict(normalize(val_embeddings)), val_labels, n_labels)
    return Probe(metrics, probe.coef_, probe.intercept_, probe.classes_)


# ---------------------------------------------------------------- causal LM


@torch.no_grad()
def causal_loss(model: Any, seqs: list[Tokenized], device: torch.device) -> dict[str, float]:
    """Mean answer-token loss and its perplexity (packed, one sequence boundary-safe row per batch)."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(seqs), 8):
        batch = packed_batch(seqs, list(range(start, min(start + 8, len(seqs)))))
        logits = (
            model(
                input_ids=batch["input_ids"].to(device),
                position_ids=batch["position_ids"].to(device),
                use_cache=False,
            )
            .logits[:, :-1]
            .float()
        )
        labels = batch["labels"][:, 1:].to(device)
        total += torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=IGNORE, reduction="sum"
        ).item()
        count += int((labels != IGNORE).sum())
    loss = total / max(1, count)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}


def prompt_and_reference(example: Example, tokenizer: Any) -> tuple[str, str]:
    if isinstance(example, ChatExample):
        history = [{"role": r, "content": c} for r, c in example.messages[:-1]]
        return render_chat(history, tokenizer, add_generation_prompt=True), example.messages[-1][1]
    assert isinstance(example, PromptCompletionExample)
    return example.prompt, example.completion


@torch.no_grad()
def generate(
    model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int, device: torch.device
) -> tuple[list[str], list[float], np.ndarray, list[int]]:
    """Greedy answers (first line), mean token probability, prompt embeddings, prompt lengths."""
    model.eval()
    tokenizer.padding_side = "left"  # generation continues right after each prompt
    answers, confidence, embeddings, lengths = [], [], [], []
    for start in range(0, len(prompts), GEN_BATCH):
        enc = tokenizer(
            prompts[start : start + GEN_BATCH], return_tensors="pt", padding=True, add_special_tokens=False
        ).to(device)
        hidden = model(**enc, output_hidden_states=True, use_cache=False).hidden_states[-1].float()
        embeddings.append(mean_pool(hidden, enc["attention_mask"]).cpu())
        lengths += enc["attention_mask"].sum(1).tolist()
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            output_scores=True,
            return_dict_in_generate=True,
            pad_token_id=tokenizer.pad_token_id,
        )
        new = out.sequences[:, enc["input_ids"].shape[1] :]
        step_probs = torch.stack([s.float().softmax(-1) for s in out.scores], 1)  # [b, steps, vocab]
        chosen = step_probs.gather(-1, new.unsqueeze(-1)).squeeze(-1)
        real = new != tokenizer.pad_token_id
        confidence += ((chosen * real).sum(1) / real.sum(1).clamp(min=1)).tolist()
        answers += [t.strip().split("\n")[0] for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    tokenizer.padding_side = "right"
    return answers, confidence, torch.cat(embeddings).numpy(), lengths


def answer_metrics(answers: list[str], references: list[str]) -> tuple[dict[str, float], list[str]]:
    """json_validity + intent/priority exact match when the references are JSON objects with an intent;
    plain exact_match otherwise. Also the predicted intent per row ('<invalid>' when unparseable)."""
    refs = [parse_json_object(r) for r in references]
    if not all(r is not None and "intent" in r for r in refs):
        return {
            "exact_match": float(np.mean([a == r.strip() for a, r in zip(answers, references, strict=True)]))
        }, []
    parsed = [parse_json_object(a) for a in answers]
    metrics = {
        "json_validity": float(np.mean([p is not None for p in parsed])),
        "intent_exact_match": float(
            np.mean(
                [p is not None and p.get("intent") == r["intent"] for p, r in zip(parsed, refs, strict=True)]
            )
        ),  # type: ignore[index]
    }
    if all("priority" in r for r in refs):  # type: ignore[operator]
        metrics["priority_exact_match"] = float(
            np.mean(
                [
                    p is not None and p.get("priority") == r["priority"]
                    for p, r in zip(parsed, refs, strict=True)
                ]
            )
        )  # type: ignore[index]
    return metrics, [str(p.get("intent")) if p else "<invalid>" for p in parsed]


def evaluate_causal(
    model: Any,
    tokenizer: Any,
    examples: list[Example],
    seqs: list[Tokenized],
    device: torch.device,
    schema: AnswerSchema | None = None,
) -> Evaluation:
    """Loss and answer scores; with a closed-set `schema` the answers are chosen among the allowed
    values (closed_set.choose_answers, as the server answers) instead of decoded freely."""
    metrics = causal_loss(model, seqs, device)
    prompts, references = zip(*(prompt_and_reference(e, tokenizer) for e in examples), strict=True)
    if schema is not None:
        return _evaluate_closed_set(model, tokenizer, list(prompts), list(references), schema, metrics)
    longest = max(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in references)
    answers, confidence, embeddings, lengths = generate(
        model, tokenizer, list(prompts), min(longest + 8, 128), device
    )
    answer_scores, predicted = answer_metrics(answers, list(references))
    return Evaluation(metrics | answer_scores, None, predicted, confidence, embeddings, lengths)


def _evaluate_closed_set(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    references: list[str],
    schema: AnswerSchema,
    metrics: dict[str, float],
) -> Evaluation:
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    answers = choose_answers(model, tokenizer, ids, schema, embed=True)
    scores = field_accuracy(schema, [a.values for a in answers], references)
    validity = {"json_validity": 1.0} if schema.kind == "json" else {}  # valid by construction
    return Evaluation(
        metrics | validity | scores,
        None,
        [str(a.values[0]) for a in answers],
        [a.confidence for a in answers],
        np.stack([a.embedding for a in answers if a.embedding is not None]),
        [len(i) for i in ids],
    )
