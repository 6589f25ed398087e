"""vLLM's runtime LoRA endpoints on kubetune's server, so that routers built for vLLM (Gateway API
Inference Extension / llm-d, AIBrix) can drive kubetune pods the same way.

Same request bodies, status codes and answers as vLLM's ``POST /v1/load_lora_adapter`` and
``POST /v1/unload_lora_adapter`` (vllm/entrypoints/openai/serving_models.py: a plain-text
``Success: ...`` on 200; 400 when a field is missing or the name is taken; 404 when unloading a name
that is not loaded), behind the admin bearer token (vLLM leaves them open unless --api-key).

Names are never reused for new weights (the stale-adapter bug of vLLM #42125): ``lora_name`` is
``name@version``, or a bare ``name`` whose version is then the first 12 hex digits of the weights'
sha256; loading a name that is loaded already is refused, and vLLM's ``load_inplace`` is refused
with a pointer to versions. An unload frees the weights (the registry drops them; vLLM #54839).
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ValidationError

from kubetune.api.loading import format_validation_error
from kubetune_trainer.artifacts import adapter_digest
from kubetune_trainer.serve.admin import authorized, state_for_folder
from kubetune_trainer.serve.config import AdapterSpec
from kubetune_trainer.serve.errors import AdapterLoadError, ServeError
from kubetune_trainer.serve.state import all_states

router = APIRouter(prefix="/v1")


class LoraUserInputError(ServeError):
    """vLLM's 400 for a request it will not act on (its error type name)."""

    type = "InvalidUserInput"
    code = "lora_invalid_request"


class LoraBadRequestError(ServeError):
    """vLLM's 400 for an adapter the engine could not load."""

    type = "BadRequestError"
    code = "lora_load_failed"


class LoraNotFoundError(ServeError):
    status = 404
    type = "NotFoundError"
    code = "lora_not_found"


class LoadLoRAAdapterRequest(BaseModel):
    lora_name: str = ""
    lora_path: str = ""
    load_inplace: bool = False


class UnloadLoRAAdapterRequest(BaseModel):
    lora_name: str = ""
    lora_int_id: int | None = None


def split_name(lora_name: str) -> tuple[str, str | None]:
    """``name@version`` -> (name, version); a bare name -> (name, None).

    >>> split_name("support-triage@v3"), split_name("support-triage")
    (('support-triage', 'v3'), ('support-triage', None))
    """
    name, sep, version = lora_name.partition("@")
    return name, (version if sep else None)


@router.post("/load_lora_adapter")
async def load_lora_adapter(body: LoadLoRAAdapterRequest, request: Request) -> PlainTextResponse:
    authorized(request)
    if not body.lora_name or not body.lora_path:
        raise LoraUserInputError("Both 'lora_name' and 'lora_path' must be provided.")
    if body.load_inplace:
        raise LoraUserInputError(
            "load_inplace is refused: new weights never reuse a loaded name; load them as name@version "
            "and unload the old version"
        )
    name, version = split_name(body.lora_name)
    if any(
        a.name == name and version in (None, a.version)
        for s in all_states(request)
        for a in s.registry.served()
    ):
        raise LoraUserInputError(f"The lora adapter '{body.lora_name}' has already been loaded.")
    s = await state_for_folder(request, body.lora_path)
    try:
        folder = await asyncio.to_thread(s.registry.adapter_dir, body.lora_path)
        if version is None:
            digest = await asyncio.to_thread(adapter_digest, folder)
            version = digest.removeprefix("sha256:")[:12]
        spec = AdapterSpec(name=name, version=version, uri=body.lora_path)
    except ValidationError as err:
        raise LoraUserInputError(format_validation_error(err)) from None
    except AdapterLoadError as err:
        raise LoraNotFoundError(f"No adapter found for {body.lora_path}: {err.message}") from None
    try:
        loaded = await s.worker.call(s.registry.load, spec)
    except AdapterLoadError as err:
        raise LoraBadRequestError(err.message) from None
    await s.worker.call(s.watch, loaded)
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")


@router.post("/unload_lora_adapter")
async def unload_lora_adapter(body: UnloadLoRAAdapterRequest, request: Request) -> PlainTextResponse:
    authorized(request)
    if not body.lora_name and not body.lora_int_id:
        raise LoraUserInputError("either 'lora_name' and 'lora_int_id' needs to be provided.")
    name, version = split_name(body.lora_name)
    owner = next(
        (
            s
            for s in all_states(request)
            if any(a.name == name and version in (None, a.version) for a in s.registry.served())
        ),
        None,
    )
    if owner is None:
        raise LoraNotFoundError(f"The lora adapter '{body.lora_name}' cannot be found.")
    unloaded = await owner.worker.call(owner.registry.unload, name, version)
    owner.unwatch(unloaded)
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")
