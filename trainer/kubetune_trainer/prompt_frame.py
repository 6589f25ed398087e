"""How one bare input text becomes an adapter's prompt: the frame every training row put its input in,
recorded in kubetune.json "prompt", so /v1/classify renders a ticket exactly as /v1/chat/completions
renders the same conversation and as the evaluation did (evaluate.prompt_and_reference).

    messages rows [system?, user, assistant], one system text (or none) for all
        -> {"format": "messages", "system": <text or null>}: the input is the user message
    prompt-completion rows
        -> {"format": "prompt-completion"}: the input is the prompt as is
    anything else (several system texts, longer histories): None, there is no single frame
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kubetune_trainer.batches import render_chat
from kubetune_trainer.data import ChatExample, Example, PromptCompletionExample

FORMATS = ("messages", "prompt-completion")


def prompt_frame(examples: Sequence[Example]) -> dict[str, Any] | None:
    """The frame shared by every training row, or None.

    >>> chat = lambda s, u: ChatExample(((("system", s),) if s else ()) + (("user", u), ("assistant", "a")))
    >>> prompt_frame([chat("Triage.", "x"), chat("Triage.", "y")])
    {'format': 'messages', 'system': 'Triage.'}
    >>> prompt_frame([chat(None, "x")]), prompt_frame([chat("A", "x"), chat("B", "y")])
    ({'format': 'messages', 'system': None}, None)
    >>> prompt_frame([PromptCompletionExample("Ticket: x", " a")])
    {'format': 'prompt-completion'}
    """
    if examples and all(isinstance(e, PromptCompletionExample) for e in examples):
        return {"format": "prompt-completion"}
    systems: set[str | None] = set()
    for example in examples:
        if not isinstance(example, ChatExample):
            return None
        history = example.messages[:-1]
        roles = [role for role, _ in history]
        if roles == ["user"]:
            systems.add(None)
        elif roles == ["system", "user"]:
            systems.add(history[0][1])
        else:
            return None
    return {"format": "messages", "system": systems.pop()} if len(systems) == 1 else None


def check_frame(frame: Any) -> dict[str, Any]:
    """kubetune.json's "prompt" entry, or ValueError saying what is wrong with it."""
    if not isinstance(frame, dict) or frame.get("format") not in FORMATS:
        raise ValueError(f"prompt {frame!r}: format must be one of {', '.join(FORMATS)}")
    if frame["format"] == "messages" and not isinstance(frame.get("system"), str | None):
        raise ValueError(f"prompt system {frame.get('system')!r} is not a string")
    return frame


def framed_prompt(frame: dict[str, Any], text: str, tokenizer: Any) -> str:
    """The prompt text for one input: the chat template over [system?, user] with the generation
    prompt (batches.render_chat, as the evaluation renders messages[:-1]), or the text itself."""
    if frame["format"] == "prompt-completion":
        return text
    system = frame.get("system")
    messages = [{"role": "system", "content": system}] if system is not None else []
    return render_chat([*messages, {"role": "user", "content": text}], tokenizer, add_generation_prompt=True)
