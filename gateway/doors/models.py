"""``GET /v1/models`` and ``GET /v1/models/{model}``: the model names a caller may use.

Names only, never params or keys. Reference: https://platform.openai.com/docs/api-reference/models
(the ``model`` object: id, object, created, owned_by). A model that does not exist, or that the
key may not use, is the same OpenAI-shaped 404 (a key learns nothing about models it may not use).
"""

from __future__ import annotations

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


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": _CREATED, "owned_by": "switchyard"}


async def _principal(request: Request) -> tuple[Services, Principal]:
    services: Services = request.app.state.services
    token = request_token(request.headers.get)
    return services, await services.auth.authenticate(token)


async def list_models(request: Request) -> Response:
    services, principal = await _principal(request)
    allowed = principal.models
    data = [_model(n) for n in services.router.model_names() if not allowed or model_allowed(allowed, n)]
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
    return Response(orjson.dumps(_model(name)), media_type="application/json")
