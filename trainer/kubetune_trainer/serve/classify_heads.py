"""/v1/classify on a causal-lm server, for an adapter of training.recipe heads: each input is framed as
the adapter's training rows framed theirs (kubetune.json "prompt", prompt_frame.py: the input is the
user message after the shared system message, or the whole prompt), then answered by the same code as
/v1/chat/completions (closed_answers: decoder_heads.predict on the same prompt ids, one row at a time),
so the label of every field is the value the chat answer holds for the same ticket.

An item answers every field with its label and probabilities ("fields"), the text the chat endpoint
answers ("answer"), and, like a classifier's item, "label" (one field: its value; several: the answer
text) and, for one field, "probabilities". `truncate` does not apply: a cut prompt is not the one the
chat endpoint answers, so an input over maxInputTokens gets its own context-length error.
"""

from __future__ import annotations

import json
from typing import Any

from kubetune_trainer.closed_set import AnswerSchema, Value
from kubetune_trainer.decoder_heads import HeadsAnswer
from kubetune_trainer.prompt_frame import framed_prompt
from kubetune_trainer.serve.adapters import Target
from kubetune_trainer.serve.errors import ContextLengthError, InvalidRequestError, ServeError, WrongTaskError
from kubetune_trainer.serve.inference import GenerationRow
from kubetune_trainer.serve.limits import chars_error

# Not read for a heads row (its answer is complete at once); the smallest value a row may have.
ANSWER_TOKENS = 1


def heads_target(target: Target) -> Target:
    """`target` when it is an adapter answering with heads, with a prompt frame; WrongTaskError else."""
    adapter = target.adapter
    if adapter is None or adapter.heads is None:
        raise WrongTaskError(
            f"{target.served_id} answers by generation; /v1/classify on a causal-lm server takes an "
            "adapter of training.recipe heads; use /v1/chat/completions",
            "model",
        )
    if adapter.prompt_frame is None:
        raise WrongTaskError(
            f'{adapter.model_id} records no prompt frame (kubetune.json "prompt": trained before '
            "/v1/classify served heads, or on rows without one shared system message); "
            "use /v1/chat/completions",
            "model",
        )
    return target


def prompt_ids(tok: Any, frame: dict[str, Any], texts: list[str]) -> list[list[int]]:
    """Each input's prompt ids, as /v1/chat/completions tokenizes the rendered chat (tokenizing thread)."""
    prompts = [framed_prompt(frame, text, tok) for text in texts]
    return [list(ids) for ids in tok(prompts, add_special_tokens=False).input_ids]


def input_errors(texts: list[str], max_input_tokens: int) -> list[ServeError | None]:
    """Before tokenizing: text past the character bound, or empty."""
    errors: list[ServeError | None] = []
    for i, text in enumerate(texts):
        param = f"input[{i}]"
        too_long = chars_error(len(text), max_input_tokens, param)
        errors.append(
            too_long or (InvalidRequestError(f"{param}: empty", param) if not text.strip() else None)
        )
    return errors


def length_error(i: int, ids: list[int], max_input_tokens: int) -> ServeError | None:
    if len(ids) <= max_input_tokens:
        return None
    param = f"input[{i}]"
    return ContextLengthError(
        f"{param}: {len(ids)} prompt tokens, more than this server's maxInputTokens {max_input_tokens}",
        param,
    )


def rows_for(target: Target, prompts: dict[int, list[int]]) -> dict[int, GenerationRow]:
    return {i: GenerationRow(target, ids, ANSWER_TOKENS) for i, ids in prompts.items()}


def label_key(value: Value) -> str:
    """A value as a probabilities key: strings as they are, numbers and booleans as JSON writes them.

    >>> label_key("high"), label_key(3), label_key(True)
    ('high', '3', 'true')
    """
    return value if isinstance(value, str) else json.dumps(value)


def answer_item(schema: AnswerSchema, answer: HeadsAnswer) -> dict[str, Any]:
    """One input's classification: every field's label and probabilities, and the chat answer's text.

    >>> from kubetune_trainer.closed_set import AnswerField
    >>> s = AnswerSchema("json", (AnswerField("intent", ("a", "b")), AnswerField("urgent", (False, True))))
    >>> item = answer_item(s, HeadsAnswer(("b", True), s.render(("b", True)), ((0.25, 0.75), (0.4, 0.6))))
    >>> item["label"], item["fields"]["urgent"]
    ('{"intent": "b", "urgent": true}', {'label': True, 'probabilities': {'false': 0.4, 'true': 0.6}})
    >>> one = AnswerSchema("plain", (AnswerField("label", ("x", "y")),))
    >>> answer_item(one, HeadsAnswer(("y",), "y", ((0.1, 0.9),)))["probabilities"]
    {'x': 0.1, 'y': 0.9}
    """
    fields = {
        f.name: {"label": value, "probabilities": dict(zip(map(label_key, f.values), probs, strict=True))}
        for f, value, probs in zip(schema.fields, answer.values, answer.probabilities, strict=True)
    }
    single = next(iter(fields.values())) if len(fields) == 1 else None
    return {
        "label": single["label"] if single else answer.text,
        **({"probabilities": single["probabilities"]} if single else {}),
        "fields": fields,
        "answer": answer.text,
    }
