"""Cohere Embed API v2 <-> ``providers.schema`` (https://docs.cohere.com/reference/embed).

``POST /v2/embed`` takes ``{model, texts (1 to 96), input_type, embedding_types, output_dimension?,
truncate?}`` (``input_type`` is required in v2) and answers ``{id, embeddings: {float: [[...]]},
texts, meta: {billed_units: {input_tokens}}}``. Vectors are always asked for as floats: the
OpenAI door writes base64 itself from them, so ``encoding_format`` never reaches Cohere.

``input_type`` defaults to ``search_document`` (LiteLLM's default); a caller's ``input_type``
field, else the deployment's, overrides it. More than 96 inputs are sent in several calls.
Token-id inputs cannot be sent: Cohere embeds text.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from providers.formats.errors import FormatError
from providers.formats.fields import req_list, req_obj
from providers.schema import EmbeddingRequest

MAX_TEXTS = 96
DEFAULT_INPUT_TYPE = "search_document"
INPUT_TYPES = frozenset({"search_document", "search_query", "classification", "clustering", "image"})
_TRUNCATE = frozenset({"NONE", "START", "END"})


def build_requests(request: EmbeddingRequest, model: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ``/v2/embed`` bodies for ``request``, in order (one per 96 inputs)."""
    texts: list[str] = []
    for i, item in enumerate(request.inputs):
        if not isinstance(item, str):
            raise FormatError("Cohere embeds text; token-id inputs cannot be sent", f"input.{i}")
        texts.append(item)
    input_type = request.extra.get("input_type") or params.get("input_type") or DEFAULT_INPUT_TYPE
    if input_type not in INPUT_TYPES:
        raise FormatError(f"'input_type' must be one of {', '.join(sorted(INPUT_TYPES))}", "input_type")
    common: dict[str, Any] = {"model": model, "input_type": input_type, "embedding_types": ["float"]}
    if request.dimensions is not None:
        common["output_dimension"] = request.dimensions
    truncate = request.extra.get("truncate") or params.get("truncate")
    if truncate is not None:
        if truncate not in _TRUNCATE:
            raise FormatError("'truncate' must be NONE, START or END", "truncate")
        common["truncate"] = truncate
    return [{**common, "texts": texts[i : i + MAX_TEXTS]} for i in range(0, len(texts), MAX_TEXTS)]


def parse_response(body: Mapping[str, Any], count: int) -> tuple[list[list[float]], int]:
    """The float vectors of one answer (``count`` expected) and its billed input tokens."""
    embeddings = req_obj(body.get("embeddings"), "embeddings")
    vectors = req_list(embeddings.get("float"), "embeddings.float")
    if len(vectors) != count:
        raise FormatError(f"expected {count} vectors, got {len(vectors)}", "embeddings.float")
    out: list[list[float]] = []
    for i, vector in enumerate(vectors):
        values = req_list(vector, f"embeddings.float.{i}")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            raise FormatError("a vector holds a value that is not a number", f"embeddings.float.{i}")
        out.append([float(v) for v in values])
    return out, _billed_tokens(body.get("meta"))


def _billed_tokens(meta: Any) -> int:
    if not isinstance(meta, Mapping):
        return 0
    for key in ("billed_units", "tokens"):
        counts = meta.get(key)
        tokens = counts.get("input_tokens") if isinstance(counts, Mapping) else None
        if isinstance(tokens, int | float) and not isinstance(tokens, bool):
            return int(tokens)
    return 0
