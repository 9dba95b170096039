"""``POST /v1/embeddings``: OpenAI Embeddings, passed through raw to OpenAI-format upstreams.

Reference: https://platform.openai.com/docs/api-reference/embeddings/create. ``input`` is a
string, an array of strings, an array of token ids or an array of token-id arrays; ``dimensions``
and ``encoding_format`` (float or base64) go upstream as sent. Cached like chat (embeddings are
deterministic, so whatever the temperature rules say); spend counts the input tokens.
"""

from __future__ import annotations

from typing import Any, ClassVar

from gateway.doors.base import Door, DoorCall, DoorOperation, DoorRequest
from gateway.doors.json_body import parse_object, require_model
from gateway.errors import bad_request
from providers.contract import Operation

# OpenAI's limits: at most 2048 inputs per request.
MAX_INPUTS = 2048
_INPUT_ERROR = (
    "'input' must be a non-empty string, array of strings, array of token ids, or array of those arrays"
)


class EmbeddingsDoor(Door):
    operation: ClassVar[DoorOperation] = "embeddings"
    capability: ClassVar[Operation] = "embeddings"

    async def read(self, raw: bytes, call: DoorCall) -> DoorRequest:
        body = parse_object(raw)
        model = require_model(body)
        chars = _check_input(body.get("input"))
        dimensions = body.get("dimensions")
        if dimensions is not None and (type(dimensions) is not int or dimensions < 1):
            raise bad_request("'dimensions' must be a positive integer", "dimensions")
        fmt = body.get("encoding_format")
        if fmt is not None and fmt not in ("float", "base64"):
            raise bad_request("'encoding_format' must be 'float' or 'base64'", "encoding_format")
        return DoorRequest(model=model, body=body, cache_material=body, estimated_tokens=chars)


def _check_input(value: Any) -> int:
    """Checks ``input``; returns a token estimate (~4 characters a token, or the ids counted)."""
    if isinstance(value, str):
        if not value:
            raise bad_request(_INPUT_ERROR, "input")
        return len(value) // 4 + 1
    if not isinstance(value, list) or not value:
        raise bad_request(_INPUT_ERROR, "input")
    if len(value) > MAX_INPUTS:
        raise bad_request(f"'input' may hold at most {MAX_INPUTS} items", "input")
    first = value[0]
    if isinstance(first, str):
        if not all(isinstance(v, str) and v for v in value):
            raise bad_request(_INPUT_ERROR, "input")
        return sum(len(v) // 4 + 1 for v in value)
    if type(first) is int:
        if not all(type(v) is int and v >= 0 for v in value):
            raise bad_request(_INPUT_ERROR, "input")
        return len(value)
    if isinstance(first, list):
        for item in value:
            if not isinstance(item, list) or not item or not all(type(v) is int and v >= 0 for v in item):
                raise bad_request(_INPUT_ERROR, "input")
        return sum(len(item) for item in value)
    raise bad_request(_INPUT_ERROR, "input")
