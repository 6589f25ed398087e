"""The ServeConfig fields as `kubetune serve --help` prints them: YAML names, types, defaults and
descriptions, read from the model itself so the help never drifts from what the server accepts."""

from __future__ import annotations

import textwrap
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from kubetune_trainer.serve.config import ServeConfig, TaskServing

EXAMPLES = "examples/serve/classify.yaml, chat.yaml, multi.yaml"


def _nested(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside a field's type (X, list[X], X | None), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _nested(arg)
        if found is not None:
            return found
    return None


def _lines(model: type[BaseModel], indent: str, seen: set[type[BaseModel]]) -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        key = field.alias or name
        default = ""
        if field.default is PydanticUndefined and field.default_factory is None:
            default = " (required)"
        elif field.default is not PydanticUndefined and not isinstance(field.default, BaseModel):
            default = f" (default {field.default!r})"
        nested = _nested(field.annotation)
        text = f"{indent}{key}{default}: {field.description or ''}".rstrip(": ")
        out += textwrap.wrap(text, 100, subsequent_indent=indent + "    ")
        if nested is TaskServing:  # the task fields are listed once, at the top level
            out.append(
                f"{indent}  each: baseModel, task, adapters, ... as at the top level (not server fields)"
            )
        elif nested is not None and nested not in seen:
            out += _lines(nested, indent + "  ", seen | {nested})
    return out


def serve_config_help() -> str:
    """The epilog of `kubetune serve --help`."""
    lines = _lines(ServeConfig, "  ", {ServeConfig})
    return (
        "serve-config.yaml fields (camelCase; examples: " + EXAMPLES + "):\n" + "\n".join(lines) + "\n\n"
        "Start-up: /healthz answers at once; the log says what loads; a line starting 'ready' is logged "
        "when /readyz turns 200."
    )
