"""OpenAI Embeddings <-> ``providers.schema``, for adapters whose upstream embeds in its own format.

Reference: https://platform.openai.com/docs/api-reference/embeddings/create (``input`` a string,
strings, token ids or arrays of them; ``dimensions``; ``encoding_format`` float or base64, where
base64 is the little-endian float32 bytes of the vector) and the ``list`` of ``embedding``
objects it answers with. OpenAI-format upstreams never come here: their bodies pass through raw.
"""

from __future__ import annotations

import base64
import sys
from array import array
from collections.abc import Mapping
from typing import Any

from providers.formats.errors import FormatError
from providers.schema import EmbeddingRequest, EmbeddingResponse
from providers.usage import Usage

_KNOWN = frozenset({"model", "input", "dimensions", "encoding_format", "user"})


def parse_request(body: Mapping[str, Any]) -> EmbeddingRequest:
    """An embeddings body (already checked by the door) as an ``EmbeddingRequest``."""
    raw = body.get("input")
    if isinstance(raw, str):
        inputs: list[str] | list[list[int]] = [raw]
    elif isinstance(raw, list) and raw and all(type(v) is int for v in raw):
        inputs = [list(raw)]
    elif isinstance(raw, list) and raw:
        inputs = list(raw)
    else:
        raise FormatError("'input' must be a string, strings, or token ids", "input")
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise FormatError("'encoding_format' must be 'float' or 'base64'", "encoding_format")
    dimensions = body.get("dimensions")
    return EmbeddingRequest(
        model=str(body.get("model") or ""),
        inputs=inputs,
        dimensions=dimensions if type(dimensions) is int else None,
        encoding_format=fmt,
        user=body.get("user") if isinstance(body.get("user"), str) else None,
        extra={k: v for k, v in body.items() if k not in _KNOWN},
    )


def build_response(resp: EmbeddingResponse, encoding_format: str = "float") -> dict[str, Any]:
    """The ``list`` body OpenAI answers with (vectors as floats or base64 float32)."""
    data = [
        {"object": "embedding", "index": i, "embedding": _encode(vector, encoding_format)}
        for i, vector in enumerate(resp.vectors)
    ]
    usage = resp.usage or Usage(0, 0)
    return {
        "object": "list",
        "data": data,
        "model": resp.model,
        "usage": {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.prompt_tokens},
    }


def _encode(vector: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format != "base64":
        return vector
    packed = array("f", vector)  # C float: 4 bytes on every platform Python supports
    if sys.byteorder != "little":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode("ascii")
