"""Validation rules written once, enforced twice: as CEL ``x-kubernetes-validations`` by the API server
and as pydantic validators in the operator, the trainer and ``kubetune train``.

A ``Rule`` is a regular expression in the RE2 subset Python's ``re`` shares (no lookaround, no
backreferences). The API server evaluates ``matches()`` as an unanchored search, so every pattern
carries its own ``^``/``$``; Python's ``$`` would also match before a trailing newline, so the
Python side reads ``$`` as ``\\Z``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from annotated_types import GroupedMetadata
from pydantic import AfterValidator, Field

# One line of printable text: what every free-form string field is limited to. Besides the C0 and C1
# controls (NEL U+0085 among them), the Unicode line and paragraph separators (U+2028, U+2029) break a
# line in logs and JSON-lines readers, and the bidi overrides make a value read other than it is. They
# sit in the class as the characters themselves: RE2 and Python spell \u escapes differently.
CONTROL_CHARS = r"[\x00-\x1f\x7f-\x9f" + "\u2028\u2029\u202a-\u202e\u2066-\u2069" + "]"
SINGLE_LINE = (
    "must be one line of printable text (no newline, tab, line or paragraph separator such as U+0085 "
    "or U+2028, bidi override or other control character)"
)


@dataclass(frozen=True)
class Rule:
    """``require``: the value must match. ``deny``: the value must not match, ``unless`` it matches."""

    message: str
    require: str | None = None
    deny: str | None = None
    unless: str | None = None

    def expression(self, subject: str = "self") -> str:
        """The rule as a CEL expression about the string ``subject``."""
        if self.require is not None:
            return f"{subject}.matches({_cel_string(self.require)})"
        assert self.deny is not None
        expr = f"!{subject}.matches({_cel_string(self.deny)})"
        if self.unless is not None:
            expr += f" || {subject}.matches({_cel_string(self.unless)})"
        return expr

    def cel(self) -> dict[str, str]:
        """The rule as an ``x-kubernetes-validations`` entry."""
        return {"rule": self.expression(), "message": self.message}

    def cel_for_keys(self) -> dict[str, str]:
        """The rule applied to every key of a map (``additionalProperties``) as one entry at the map."""
        return {"rule": f"self.all(k, {self.expression('k')})", "message": self.message}

    def broken_by(self, value: str) -> bool:
        if self.require is not None:
            return _search(self.require, value) is None
        assert self.deny is not None
        return _search(self.deny, value) is not None and (
            self.unless is None or _search(self.unless, value) is None
        )


def _cel_string(pattern: str) -> str:
    quote = '"' if '"' not in pattern else "'"
    assert quote not in pattern, pattern
    return f"r{quote}{pattern}{quote}"


@lru_cache(maxsize=256)
def _python_regex(pattern: str) -> re.Pattern[str]:
    """``pattern`` with every ``$`` outside a character class read as end of text (``\\Z``)."""
    out, in_class, escaped = [], False, False
    for char in pattern:
        if escaped:
            out.append(char)
            escaped = False
        elif char == "\\":
            out.append(char)
            escaped = True
        elif in_class:
            out.append(char)
            in_class = char != "]"
        elif char == "[":
            out.append(char)
            in_class = True
        else:
            out.append(r"\Z" if char == "$" else char)
    return re.compile("".join(out))


def _search(pattern: str, value: str) -> re.Match[str] | None:
    return _python_regex(pattern).search(value)


def first_broken(rules: Sequence[Rule], value: str) -> Rule | None:
    """The first rule ``value`` breaks, in declaration order (the order of the messages)."""
    return next((rule for rule in rules if rule.broken_by(value)), None)


def enforce(rules: Sequence[Rule], what: str = "") -> Callable[[Any], Any]:
    """A pydantic after-validator raising the first broken rule's message (None passes: unset)."""

    def check(value: Any) -> Any:
        if value is None:
            return value
        broken = first_broken(rules, value)
        if broken is not None:
            raise ValueError(f"{what}{value[:100]!r} {broken.message}")
        return value

    return check


class Checked(GroupedMetadata):
    """``Annotated[str, Checked(...)]``: a description, length bounds and ``rules`` in both places.

    Every string a CEL rule reads needs a ``maxLength``: the API server refuses a CRD whose rules could
    cost more than its budget on the longest allowed value.
    """

    def __init__(self, description: str, max_length: int, *rules: Rule, min_length: int | None = None):
        extra: dict[str, Any] = {"x-kubernetes-validations": [rule.cel() for rule in rules]}
        self.field = Field(
            description=description,
            max_length=max_length,
            min_length=min_length,
            json_schema_extra=extra if rules else None,
        )
        self.validator = AfterValidator(enforce(rules))

    def __iter__(self) -> Iterator[Any]:
        yield self.field
        yield self.validator


def single_line() -> Rule:
    return Rule(SINGLE_LINE, deny=CONTROL_CHARS)
