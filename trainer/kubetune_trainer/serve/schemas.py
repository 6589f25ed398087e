"""Request bodies. OpenAI fields we do not implement are ignored, except where honouring them silently
would change the answer (n > 1): those are rejected."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError


def unencodable(value: Any, path: str = "") -> str | None:
    """Where the first string UTF-8 cannot encode sits in a parsed JSON body (a lone surrogate such as
    "\\ud800" is valid JSON, but no tokenizer, file or response can take it), as a message; None when
    every key and string is fine.

    >>> unencodable({"input": ["ok", "a\\ud800"]})
    'input[1]: character 1 is U+D800, a lone surrogate; send valid Unicode text'
    """
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            return (
                f"{path or 'body'}: character {err.start} is U+{ord(value[err.start]):04X}, a lone "
                "surrogate; send valid Unicode text"
            )
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = unencodable(key, f"{path} key") or unencodable(item, f"{path}.{key}" if path else key)
            if found:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = unencodable(item, f"{path}[{i}]")
            if found:
                return found
    return None


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _encodable(cls, data: Any) -> Any:
        found = unencodable(data)
        if found:
            raise PydanticCustomError("unencodable_text", found)
        return data


MAX_TOP_LOGPROBS = 20  # OpenAI's bound on top_logprobs


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Body):
    model: Annotated[str, Field(min_length=1, max_length=256)]
    max_tokens: Annotated[int | None, Field(ge=1)] = None
    max_completion_tokens: Annotated[int | None, Field(ge=1)] = None
    temperature: Annotated[float, Field(ge=0, le=2)] = 0.0
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    n: Annotated[int, Field(ge=1, le=1, description="Only one choice per prompt.")] = 1
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None

    @property
    def stop_strings(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        return tuple(s for s in stops if s)

    @property
    def requested_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def logprob_count(self) -> int | None:
        """None: no logprobs asked for; else how many alternatives per generated token."""
        return None


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ChatMessage(_Body):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[TextPart] | None = None

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    logprobs: bool = False
    top_logprobs: Annotated[int | None, Field(ge=0, le=MAX_TOP_LOGPROBS)] = None

    @property
    def logprob_count(self) -> int | None:  # vLLM's chat `logprobs` + `top_logprobs`
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(_Sampling):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=256)]
    logprobs: Annotated[int | None, Field(ge=0, le=MAX_TOP_LOGPROBS)] = None

    @property
    def logprob_count(self) -> int | None:
        return self.logprobs

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class ClassifyRequest(_Body):
    model: Annotated[str, Field(min_length=1, max_length=256)]
    input: str | Annotated[list[str], Field(min_length=1, max_length=1024)]
    metadata: Annotated[
        dict[str, str | int | float | bool] | None,
        Field(description="Kept with fresh-data rows after monitoring.dropFields/hashFields apply."),
    ] = None

    @property
    def inputs(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class FeedbackRequest(_Body):
    request_id: Annotated[str, Field(min_length=1, max_length=256, alias="requestId")]
    index: Annotated[int, Field(ge=0, description="Which input of a multi-input request.")] = 0
    label: Annotated[str | None, Field(min_length=1, max_length=512)] = None
    correct: bool | None = None

    @model_validator(mode="after")
    def _one_verdict(self) -> FeedbackRequest:
        if (self.label is None) == (self.correct is None):
            raise ValueError("give exactly one of `label` (the true label) and `correct` (true/false)")
        return self


class AdapterLoadRequest(_Body):
    name: str
    version: str
    uri: str
    digest: Annotated[
        str | None, Field(description="sha256:<hex> the weights must have; refused (422) otherwise.")
    ] = None
    unload_previous: Annotated[
        bool, Field(alias="unloadPrevious", description="After the swap, unload other versions of `name`.")
    ] = True
