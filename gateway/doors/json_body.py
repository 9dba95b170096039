"""Reading an OpenAI-style JSON request body: parse it bounded, require its ``model``."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.errors import bad_request
from gateway.server.body import check_json_depth


def parse_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object (400 ``invalid_json`` for anything else)."""
    if not raw:
        raise bad_request("request body is empty; expected a JSON object", code="invalid_json")
    check_json_depth(raw)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request("request body must be a JSON object", code="invalid_json")
    return body


def require_model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("'model' is required and must be a non-empty string", "model")
    return model
