"""The calls kubetune makes to an OpenAI-compatible engine (vLLM's API server, or another kubetune
server): list models, load/unload a LoRA at runtime, and forward one inference request.

Shapes follow vLLM (vllm/entrypoints/openai/serving_models.py): ``GET /v1/models`` lists the base
with ``parent: null`` and each LoRA as ``{"id": lora_name, "root": lora_path, "parent": base}``;
``POST /v1/load_lora_adapter {"lora_name", "lora_path"}`` answers 200 ``Success: ...`` or 400
``... has already been loaded.``; ``POST /v1/unload_lora_adapter {"lora_name"}`` answers 200 or 404.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from kubetune_trainer.serve.config import EngineSpec
from kubetune_trainer.serve.errors import ServeError


class EngineUnavailableError(ServeError):
    """The engine did not answer (starting, restarting or gone): the client may retry."""

    status = 503
    type = "service_unavailable"
    code = "engine_unavailable"


class EngineCallError(Exception):
    """The engine answered a LoRA call with an error; `status` and its message are kept."""

    def __init__(self, what: str, status: int, text: str) -> None:
        super().__init__(f"{what}: engine answered HTTP {status}: {text[:500]}")
        self.status = status


@dataclass(frozen=True)
class EngineModels:
    """What the engine serves: its base model id, the LoRA ids it holds, and who it says serves them
    (the base card's owned_by: "vllm" for vLLM, "kubetune" for our server)."""

    base: str | None
    loras: frozenset[str]
    owner: str | None = None


def parse_models(listing: dict[str, Any]) -> EngineModels:
    """vLLM's ModelList -> base id and LoRA ids (cards with a `parent`). A kubetune engine also lists
    each bare adapter name as an alias (`aliasOf`); those are not loaded adapters.

    >>> parse_models({"data": [{"id": "b", "parent": None}, {"id": "t@v1", "parent": "b"},
    ...                        {"id": "t", "parent": "b", "aliasOf": "t@v1"}]})
    EngineModels(base='b', loras=frozenset({'t@v1'}), owner=None)
    """
    cards = listing.get("data") or []
    base_card = next((c for c in cards if not c.get("parent")), {})
    loras = frozenset(c["id"] for c in cards if c.get("parent") and not c.get("aliasOf"))
    return EngineModels(base_card.get("id"), loras, base_card.get("owned_by"))


class EngineClient:
    """One pooled HTTP client to the engine; every call carries the engine's bearer key if set."""

    def __init__(self, spec: EngineSpec) -> None:
        logging.getLogger("httpx").setLevel(logging.WARNING)  # not a log line per request and sync poll
        headers = {"authorization": f"Bearer {spec.api_key.get_secret_value()}"} if spec.api_key else {}
        self.url = spec.url.rstrip("/")
        self.http = httpx.AsyncClient(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(spec.timeout_s, connect=5.0),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
        )

    async def close(self) -> None:
        await self.http.aclose()

    async def models(self) -> EngineModels:
        try:
            answer = await self.http.get("/v1/models", timeout=10.0)
        except httpx.HTTPError as err:
            raise EngineUnavailableError(f"engine {self.url} did not answer GET /v1/models: {err}") from None
        if answer.status_code != 200:
            raise EngineCallError("GET /v1/models", answer.status_code, answer.text)
        return parse_models(answer.json())

    async def load_lora(self, name: str, path: str) -> None:
        """Load `name` from `path`; a name the engine holds already counts as loaded (names are
        name@version, never reused for other weights)."""
        answer = await self._post("/v1/load_lora_adapter", {"lora_name": name, "lora_path": path})
        if answer.status_code == 200 or (answer.status_code == 400 and "already been loaded" in answer.text):
            return
        raise EngineCallError(f"load {name} from {path}", answer.status_code, answer.text)

    async def unload_lora(self, name: str) -> None:
        """Unload `name`; one the engine does not hold (404) is already gone."""
        answer = await self._post("/v1/unload_lora_adapter", {"lora_name": name})
        if answer.status_code not in (200, 404):
            raise EngineCallError(f"unload {name}", answer.status_code, answer.text)

    async def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        try:
            return await self.http.post(path, json=body, timeout=300.0)
        except httpx.HTTPError as err:
            raise EngineUnavailableError(f"engine {self.url} did not answer POST {path}: {err}") from None

    @asynccontextmanager
    async def forward(
        self, path: str, body: dict[str, Any], headers: dict[str, str]
    ) -> AsyncIterator[httpx.Response]:
        """POST an inference request and yield the engine's response with its body not yet read
        (stream it, or `await response.aread()`)."""
        request = self.http.build_request("POST", path, json=body, headers=headers)
        try:
            response = await self.http.send(request, stream=True)
        except httpx.HTTPError as err:
            raise EngineUnavailableError(f"engine {self.url} did not answer POST {path}: {err}") from None
        try:
            yield response
        finally:
            await response.aclose()
