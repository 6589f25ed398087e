"""Closed-set answers: infer the allowed values of each answer field from the training rows, and pick
an answer by log-likelihood among them (at evaluation and at serving time, with the same function).

An answer schema exists when every training answer is either
  json   one JSON object, the same keys in the same order, laid out exactly as json.dumps writes it
         (", "/": " or ","/":" separators), every value a string, integer or boolean; or
  plain  a single label (not a JSON object),
and every field takes at most MAX_VALUES distinct values, each seen at least MIN_COUNT times (a value
seen once is what free text looks like). The schema travels with the adapter (kubetune.json
"answerSchema"), so the server constrains answers exactly as the evaluation scored them.

Choosing an answer (choose_answers): the prompt runs once; then, field by field in order, every
allowed value is scored as the log-probability of the answer text from its start up to and including
the value's closing delimiter (the last field: up to the end-of-turn text the adapter was trained to
emit), the earlier fields fixed to the values already chosen. The highest one wins, as a classifier's
argmax would; the answer is always valid.

    {"intent": "billing_refund", "priority": "high"}<|im_end|>
    field 1 candidates: '{"intent": "billing_refund",'  '{"intent": "fraud_report",' ...
    field 2 candidates: '{"intent": "billing_refund", "priority": "high"}<|im_end|>\n' ...
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from kubetune_trainer.data import ChatExample, Example, PromptCompletionExample

MAX_VALUES = 64  # more distinct values than this is not a label set
MIN_COUNT = 2
SEPARATORS = ((", ", ": "), (",", ":"))
Value = str | int | bool


@dataclass(frozen=True)
class AnswerField:
    name: str
    values: tuple[Value, ...]  # sorted; the probe's class order


@dataclass(frozen=True)
class AnswerSchema:
    """What every answer of a task looks like, and how it ends (the trained end-of-turn text)."""

    kind: Literal["json", "plain"]
    fields: tuple[AnswerField, ...]
    end: str = ""
    separators: tuple[str, str] = SEPARATORS[0]

    def metric(self, name: str) -> str:
        """The metric that scores one field: exact_match (plain) or <field>_exact_match (json), the
        names evaluate.answer_metrics already reports."""
        return "exact_match" if self.kind == "plain" else f"{name}_exact_match"

    @property
    def metrics(self) -> list[str]:
        return [self.metric(f.name) for f in self.fields]

    def render(self, values: Sequence[Value]) -> str:
        """The answer text (without `end`) for one value per field, in field order."""
        if self.kind == "plain":
            return str(values[0])
        item, key = self.separators
        named = zip(self.fields[: len(values)], values, strict=True)
        parts = [f"{json.dumps(f.name)}{key}{json.dumps(v)}" for f, v in named]
        return "{" + item.join(parts) + "}"

    def parse(self, answer: str) -> dict[str, Value] | None:
        """Field -> value of an answer text, or None when it is not shaped like this schema."""
        if self.kind == "plain":
            return {self.fields[0].name: answer}
        return parse_json_object(answer)

    def candidate(self, chosen: Sequence[Value], value: Value) -> str:
        """The answer text scored for `value` of field len(chosen): from the start through the value's
        closing delimiter, or through `end` for the last field."""
        values = [*chosen, value]
        if len(values) == len(self.fields):
            return self.render(values) + self.end
        return self.render(values)[:-1] + self.separators[0].rstrip()  # "}" -> ","

    def lead(self) -> str:
        """The text every answer starts with before its first value (json: through the opening quote
        when the first field's values are all strings; plain: nothing).

        >>> AnswerSchema("json", (AnswerField("intent", ("a", "b")), AnswerField("n", (1,)))).lead()
        '{"intent": "'
        >>> AnswerSchema("json", (AnswerField("n", (1, 2)),), separators=(",", ":")).lead()
        '{"n":'
        >>> AnswerSchema("plain", (AnswerField("label", ("a",)),)).lead()
        ''
        """
        if self.kind == "plain":
            return ""
        first = self.fields[0]
        quoted = all(isinstance(v, str) for v in first.values)
        return "{" + json.dumps(first.name) + self.separators[1] + ('"' if quoted else "")

    def wire(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "fields": [{"name": f.name, "values": list(f.values)} for f in self.fields],
            "end": self.end,
            "separators": list(self.separators),
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> AnswerSchema:
        return cls(
            kind=data["kind"],
            fields=tuple(AnswerField(f["name"], tuple(f["values"])) for f in data["fields"]),
            end=data.get("end", ""),
            separators=tuple(data.get("separators", SEPARATORS[0])),  # type: ignore[arg-type]
        )


# ---------------------------------------------------------------- inference from the training rows


def infer_schema(answers: Sequence[str], end: str = "") -> tuple[AnswerSchema | None, str]:
    """The closed-set schema of these answers, or None and why not.

    >>> infer_schema(['{"a": "x"}', '{"a": "y"}', '{"a": "x"}', '{"a": "y"}'])[0].fields
    (AnswerField(name='a', values=('x', 'y')),)
    >>> infer_schema(["yes", "no", "yes"])[1]
    "value 'no' is seen 1 time(s), fewer than 2: free text, not a label set"
    """
    if not answers:
        return None, "no answers"
    objects = [parse_json_object(a) for a in answers]
    if all(o is not None for o in objects):
        return _json_schema(answers, objects, end)  # type: ignore[arg-type]
    if any(o is not None for o in objects):
        return None, "some answers are JSON objects and some are not"
    problem = _closed_set_problem(list(answers))
    if problem:
        return None, problem
    return AnswerSchema("plain", (AnswerField("answer", tuple(sorted(set(answers)))),), end), ""


def parse_json_object(text: str) -> dict[str, Any] | None:
    """The JSON object `text` holds, or None (not JSON, or JSON but not an object)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _json_schema(
    answers: Sequence[str], objects: list[dict[str, Any]], end: str
) -> tuple[AnswerSchema | None, str]:
    keys = list(objects[0])
    if not keys or any(list(o) != keys for o in objects):
        return None, "the JSON answers do not all have the same keys in the same order"
    layout = next(
        (
            s
            for s in SEPARATORS
            if all(json.dumps(o, separators=s) == a for o, a in zip(objects, answers, strict=True))
        ),
        None,
    )
    if layout is None:
        return None, "the JSON answers are not laid out as json.dumps writes them (one line, fixed spacing)"
    fields = []
    for key in keys:
        values = [o[key] for o in objects]
        if not all(isinstance(v, str | int | bool) for v in values):
            return None, f"field {key!r} holds values that are not strings, integers or booleans"
        problem = _closed_set_problem(values)
        if problem:
            return None, f"field {key!r}: {problem}"
        fields.append(AnswerField(key, tuple(sorted(set(values), key=lambda v: (str(type(v)), v)))))
    return AnswerSchema("json", tuple(fields), end, layout), ""


def _closed_set_problem(values: list[Value]) -> str:
    counts = Counter(values)
    if len(counts) < 2:
        return "fewer than 2 distinct values"
    if len(counts) > MAX_VALUES:
        return f"{len(counts)} distinct values, more than {MAX_VALUES}"
    rare = min(counts, key=lambda v: (counts[v], str(v)))
    if counts[rare] < MIN_COUNT:
        return (
            f"value {rare!r} is seen {counts[rare]} time(s), fewer than {MIN_COUNT}: "
            "free text, not a label set"
        )
    return ""


def answer_end(tokenizer: Any, chat: bool) -> str:
    """The text training puts after every answer (batches.tokenize_examples): the chat template's
    end-of-turn, or the eos token after a completion."""
    if not chat:
        return str(tokenizer.eos_token or "")
    from kubetune_trainer.batches import render_chat

    marker = "\u2063ANSWER\u2063"
    turns = [{"role": "user", "content": "q"}, {"role": "assistant", "content": marker}]
    rendered = render_chat(turns, tokenizer, add_generation_prompt=False)
    return rendered[rendered.index(marker) + len(marker) :]


def answer_of(example: Example) -> str:
    """The reference answer of a causal-lm example: the last assistant turn, or the completion."""
    if isinstance(example, ChatExample):
        return example.messages[-1][1]
    assert isinstance(example, PromptCompletionExample)
    return example.completion


def schema_of(examples: Sequence[Example], tokenizer: Any) -> tuple[AnswerSchema | None, str]:
    """The closed-set schema of a task's training answers (None and why not), ending as trained."""
    chat = bool(examples) and isinstance(examples[0], ChatExample)
    return infer_schema([answer_of(e) for e in examples], answer_end(tokenizer, chat))


# ---------------------------------------------------------------- choosing an answer


@dataclass(frozen=True)
class ClosedAnswer:
    values: tuple[Value, ...]
    text: str  # schema.render(values): what the model answers
    confidence: float  # mean over fields of the chosen value's share of the candidates' likelihood
    embedding: np.ndarray | None  # mean-pooled last hidden state of the prompt (drift reference)


Route = Callable[[int], dict[str, Any]]  # rows -> forward kwargs that pick the adapter (serving)


@torch.no_grad()
def choose_answer(
    model: Any,
    tokenizer: Any,
    prompt_ids: list[int],
    schema: AnswerSchema,
    route: Route = lambda rows: {},
    embed: bool = False,
) -> ClosedAnswer:
    """Pick each field's value by log-likelihood given the prompt (see the module docstring)."""
    device = next(model.parameters()).device
    prompt = torch.tensor([prompt_ids], device=device)
    out = model(input_ids=prompt, use_cache=True, output_hidden_states=embed, logits_to_keep=1, **route(1))
    first = out.logits[0, -1].float().log_softmax(-1)
    embedding = out.hidden_states[-1][0].float().mean(0).cpu().numpy() if embed else None
    chosen: list[Value] = []
    shares = []
    for field in schema.fields:
        texts = [schema.candidate(chosen, v) for v in field.values]
        scores = _continuation_scores(model, tokenizer, texts, out.cache, first, len(prompt_ids), route)
        best = int(scores.argmax())
        chosen.append(field.values[best])
        shares.append(float(scores.softmax(-1)[best]))
    return ClosedAnswer(tuple(chosen), schema.render(chosen), float(np.mean(shares)), embedding)


def _continuation_scores(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    prompt_cache: Any,
    first: torch.Tensor,
    prompt_len: int,
    route: Route,
) -> torch.Tensor:
    """Summed log-probability of each text's tokens after the (cached) prompt."""
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(len(i) for i in ids)
    device = first.device
    batch = torch.tensor([i + [i[-1]] * (width - len(i)) for i in ids], device=device)  # right pad
    real = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids], device=device)
    cache = copy.deepcopy(prompt_cache)
    cache.batch_repeat_interleave(len(texts))
    positions = torch.arange(prompt_len, prompt_len + width, device=device).expand(len(texts), -1)
    # No attention mask: padding sits after every real token, so causal attention never reads it.
    logits = model(input_ids=batch, position_ids=positions, cache=cache, use_cache=True, **route(len(texts)))
    logp = logits.logits[:, :-1].float().log_softmax(-1).gather(-1, batch[:, 1:, None]).squeeze(-1)
    return first[batch[:, 0]] + (logp * real[:, 1:]).sum(1)


def choose_answers(
    model: Any, tokenizer: Any, prompts: list[list[int]], schema: AnswerSchema, embed: bool = False
) -> list[ClosedAnswer]:
    """choose_answer for each prompt, with the model's active adapter (evaluation)."""
    model.eval()
    return [choose_answer(model, tokenizer, p, schema, embed=embed) for p in prompts]


# ---------------------------------------------------------------- scoring (evaluation, benchmarks)


def field_accuracy(
    schema: AnswerSchema, predicted: Sequence[Sequence[Value]], references: Sequence[str]
) -> dict[str, float]:
    """Per-field exact match of chosen values against reference answers (unparseable reference:
    every field wrong), keyed by schema.metric."""
    refs = [schema.parse(r.strip()) or {} for r in references]
    return {
        schema.metric(f.name): float(
            np.mean([ref.get(f.name) == values[i] for values, ref in zip(predicted, refs, strict=True)])
        )
        for i, f in enumerate(schema.fields)
    }


def closed_set_accuracy(
    model: Any, tokenizer: Any, prompts: list[list[int]], references: Sequence[str], schema: AnswerSchema
) -> dict[str, float]:
    """Per-field accuracy of closed-set answers: the pure entry point for benchmarks and recipes."""
    answers = choose_answers(model, tokenizer, prompts, schema)
    return field_accuracy(schema, [a.values for a in answers], references)
