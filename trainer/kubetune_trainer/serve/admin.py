"""Hot load / unload of adapters, behind a bearer token; disabled when no token is configured.

The operator drives these from the AdapterDeployment spec; the declared set is also what every new
pod loads at start-up, so nothing loaded here is lost on a restart that the spec does not also say.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError

from kubetune.api.loading import format_validation_error
from kubetune_trainer.serve.adapters import LoadedAdapter, read_adapter_meta
from kubetune_trainer.serve.config import AdapterSpec
from kubetune_trainer.serve.errors import AdminDisabledError, AuthenticationError, InvalidRequestError
from kubetune_trainer.serve.schemas import AdapterLoadRequest
from kubetune_trainer.serve.state import ServerState, all_states, server_state

router = APIRouter(prefix="/admin")


def authorized(request: Request) -> ServerState:
    s = server_state(request)
    token = s.config.admin_token
    if token is None:
        raise AdminDisabledError("the admin API is disabled: KUBETUNE_ADMIN_TOKEN is not set")
    given = presented_token(request.headers.get("authorization", ""))
    if given is None or not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
        raise AuthenticationError("missing or wrong bearer token for /admin")
    s.require_ready()
    return s


def presented_token(authorization: str) -> str | None:
    """The token of `Bearer <token>`, or the password of `Basic base64(user:token)` (a browser).

    >>> presented_token("Basic " + base64.b64encode(b"admin:s3cret").decode())
    's3cret'
    """
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer":
        return value
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value, validate=True).decode().partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            return None
    return None


async def state_for_folder(request: Request, uri: str) -> ServerState:
    """The task an adapter folder was trained for (its kubetune.json), where the server runs several;
    the top-level task otherwise (its load then says why the folder does not fit)."""
    states = all_states(request)
    if len(states) == 1:
        return states[0]
    folder = await asyncio.to_thread(states[0].registry.adapter_dir, uri)
    task = read_adapter_meta(folder).get("task")
    return next((t for t in states if t.config.task == task), states[0])


def describe(adapter: LoadedAdapter) -> dict[str, Any]:
    return {
        "name": adapter.name,
        "version": adapter.version,
        "uri": adapter.uri,
        "digest": adapter.digest,
        "parameters": adapter.parameters,
    }


@router.post("/adapters")
async def load_adapter(body: AdapterLoadRequest, request: Request) -> dict[str, Any]:
    """Load name@version (warmed up before `name` routes to it); by default unload older versions."""
    authorized(request)
    try:
        spec = AdapterSpec(name=body.name, version=body.version, uri=body.uri, digest=body.digest)
    except ValidationError as err:
        raise InvalidRequestError(format_validation_error(err)) from None
    s = await state_for_folder(request, spec.uri)
    before = s.registry.parameter_count()
    loaded = await s.worker.call(s.registry.load, spec)
    await s.worker.call(s.watch, loaded)
    unloaded: list[LoadedAdapter] = []
    if body.unload_previous:
        for old in [a for a in s.registry.served() if a.name == spec.name and a.version != spec.version]:
            unloaded += await s.worker.call(s.registry.unload, old.name, old.version)
    s.unwatch(unloaded)
    return {
        "loaded": describe(loaded),
        "unloaded": [describe(a) for a in unloaded],
        "parametersBefore": before,
        "parametersAfter": s.registry.parameter_count(),
    }


@router.delete("/adapters")
async def unload_adapter(request: Request, name: str, version: str | None = None) -> dict[str, Any]:
    """Unload name@version, or every version of `name`; the weights are freed, not just hidden."""
    first = authorized(request)
    s = next((t for t in all_states(request) if any(a.name == name for a in t.registry.served())), first)
    before = s.registry.parameter_count()
    unloaded = await s.worker.call(s.registry.unload, name, version)
    s.unwatch(unloaded)
    return {
        "unloaded": [describe(a) for a in unloaded],
        "parametersBefore": before,
        "parametersAfter": s.registry.parameter_count(),
    }
