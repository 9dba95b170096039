"""``GET /v1/models``: the model names a caller may use (names only, never params or keys)."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.auth import token_from_headers
from gateway.services import Services

_CREATED = 1_700_000_000  # a fixed timestamp: config models have no creation time


async def list_models(request: Request) -> Response:
    services: Services = request.app.state.services
    token = token_from_headers(request.headers.get("authorization"), request.headers.get("api-key"))
    principal = await services.auth.authenticate(token)
    allowed = principal.models
    data = [
        {"id": name, "object": "model", "created": _CREATED, "owned_by": "switchyard"}
        for name in services.router.model_names()
        if not allowed or name in allowed
    ]
    return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")
