"""``GET /v1/models`` and ``GET /v1/models/{model}``: the model names a caller may use.

Names only, never params or keys. Reference: https://platform.openai.com/docs/api-reference/models
(the ``model`` object: id, object, created, owned_by). A model that does not exist, or that the
key may not use, is the same OpenAI-shaped 404 (a key learns nothing about models it may not use).
A model served only by the local engine also carries ``max_model_len`` and ``capabilities``
(tools, json, vision), as the engine's own server reports them.
"""

from __future__ import annotations

import asyncio
import importlib
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.auth import request_token
from gateway.errors import GatewayError
from gateway.pipeline import Principal
from gateway.routing.wildcards import model_allowed
from gateway.services import Services

_CREATED = 1_700_000_000  # a fixed timestamp: config models have no creation time


async def _model(services: Services, name: str) -> dict[str, Any]:
    model = {"id": name, "object": "model", "created": _CREATED, "owned_by": "switchyard"}
    return {**model, **await _local_card(services, name)}


async def _local_card(services: Services, name: str) -> dict[str, Any]:
    """For a name every deployment of which is ``local/``: the smallest context length (a request may
    land on any of them) and the capabilities all of them have. Nothing for other names: what a
    hosted upstream supports is not ours to say."""
    group = services.router.groups.get(name)
    deployments = [s.deployment for s in group.deployments] if group is not None else []
    if not deployments or any(d.provider != "local" for d in deployments):
        return {}
    if services.providers.built("local") is None:
        # Its module imports torch (seconds): off the event loop, which keeps serving meanwhile.
        await asyncio.to_thread(importlib.import_module, "providers.local")
    local = services.providers.get("local")
    cards = [await local.describe(d.upstream_model, d.params) for d in deployments]  # type: ignore[attr-defined]
    card: dict[str, Any] = {
        "capabilities": {
            flag: all(c["capabilities"][flag] for c in cards) for flag in cards[0]["capabilities"]
        }
    }
    lengths = [c["max_model_len"] for c in cards if "max_model_len" in c]
    if lengths:
        card["max_model_len"] = min(lengths)
    return card


async def _principal(request: Request) -> tuple[Services, Principal]:
    services: Services = request.app.state.services
    token = request_token(request.headers.get)
    return services, await services.auth.authenticate(token)


async def list_models(request: Request) -> Response:
    services, principal = await _principal(request)
    allowed = principal.models
    names = [n for n in services.router.model_names() if not allowed or model_allowed(allowed, n)]
    data = await asyncio.gather(*(_model(services, n) for n in names))
    return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")


async def retrieve_model(request: Request) -> Response:
    services, principal = await _principal(request)
    name = request.path_params["model"]
    allowed = principal.models
    # Configured names only (a wildcard entry's matches are not models of their own), as LiteLLM.
    if name not in services.router.model_names() or (allowed and not model_allowed(allowed, name)):
        raise GatewayError(
            404,
            f"The model '{name}' does not exist or you do not have access to it.",
            "invalid_request_error",
            "model_not_found",
            "model",
        )
    return Response(orjson.dumps(await _model(services, name)), media_type="application/json")
