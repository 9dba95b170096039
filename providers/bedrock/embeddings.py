"""Embedding models on Bedrock's InvokeModel: Amazon Titan text embeddings and Cohere Embed.

References: https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_InvokeModel.html
(``POST /model/{modelId}/invoke``, the model's own JSON body, the
``X-Amzn-Bedrock-Input-Token-Count`` header);
https://docs.aws.amazon.com/bedrock/latest/userguide/model-parameters-titan-embed-text.html
(``{"inputText", "dimensions", "normalize"}`` -> ``{"embedding", "inputTextTokenCount"}``, one
text per call) and
https://docs.aws.amazon.com/bedrock/latest/userguide/model-parameters-embed.html
(``{"texts", "input_type", "truncate"}`` -> ``{"embeddings": [[...]]}``, up to 96 texts a call).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from providers.bedrock.errors import malformed
from providers.errors import ProviderError
from providers.formats.errors import FormatError
from providers.schema import EmbeddingRequest

Family = Literal["titan", "cohere"]

COHERE_MAX_TEXTS = 96
# Titan v1 (amazon.titan-embed-text-v1, g1-text-02) has a fixed 1536 dimensions.
_TITAN_V1_MARKERS = ("titan-embed-text-v1", "titan-embed-g1-text")
_COHERE_INPUT_TYPES = frozenset({"search_document", "search_query", "classification", "clustering"})


@dataclass(frozen=True, slots=True)
class Invocation:
    """One InvokeModel body and how many of the request's inputs it embeds."""

    body: dict[str, Any]
    count: int


def family_of(model_id: str) -> Family:
    if "amazon.titan-embed-text" in model_id or "amazon.titan-embed-g1-text" in model_id:
        return "titan"
    if "cohere.embed" in model_id:
        return "cohere"
    raise ProviderError(
        400,
        f"'{model_id}' is not an embedding model this gateway can call on Bedrock "
        "(Amazon Titan text embeddings, Cohere Embed)",
        "invalid_request_error",
        "model_not_supported",
        "model",
    )


def build_invocations(model_id: str, request: EmbeddingRequest) -> list[Invocation]:
    """The InvokeModel bodies embedding ``request.inputs``, in order; ``FormatError`` naming the
    field a model cannot take."""
    texts = _texts(request)
    if family_of(model_id) == "titan":
        if request.dimensions is not None and any(m in model_id for m in _TITAN_V1_MARKERS):
            raise FormatError("this Titan model has fixed dimensions; remove 'dimensions'", "dimensions")
        normalize = request.extra.get("normalize")
        out = []
        for text in texts:
            body: dict[str, Any] = {"inputText": text}
            if request.dimensions is not None:
                body["dimensions"] = request.dimensions
            if isinstance(normalize, bool):
                body["normalize"] = normalize
            out.append(Invocation(body, 1))
        return out
    input_type = request.extra.get("input_type", "search_document")
    if input_type not in _COHERE_INPUT_TYPES:
        raise FormatError(
            f"'input_type' must be one of {', '.join(sorted(_COHERE_INPUT_TYPES))}", "input_type"
        )
    base: dict[str, Any] = {"input_type": input_type}
    truncate = request.extra.get("truncate")
    if truncate is not None:
        base["truncate"] = truncate
    if request.dimensions is not None:
        base["output_dimension"] = request.dimensions  # Embed v4 only; older models refuse it
    return [
        Invocation({"texts": texts[i : i + COHERE_MAX_TEXTS], **base}, len(texts[i : i + COHERE_MAX_TEXTS]))
        for i in range(0, len(texts), COHERE_MAX_TEXTS)
    ]


def _texts(request: EmbeddingRequest) -> list[str]:
    texts: list[str] = []
    for i, value in enumerate(request.inputs):
        if not isinstance(value, str):
            raise FormatError("Bedrock embedding models take text, not token ids", f"input.{i}")
        texts.append(value)
    return texts


def parse_vectors(
    family: Family, body: Mapping[str, Any], count: int
) -> tuple[list[list[float]], int | None]:
    """The vectors of one InvokeModel answer, and the input tokens it reports (Titan only: for
    Cohere the count comes from the response header)."""
    if family == "titan":
        vector = body.get("embedding")
        tokens = body.get("inputTextTokenCount")
        vectors = [vector] if isinstance(vector, list) else []
        return _checked(vectors, count), tokens if isinstance(tokens, int) else None
    embeddings = body.get("embeddings")
    if isinstance(embeddings, Mapping):  # asked with embedding_types: {"float": [[...]]}
        embeddings = embeddings.get("float")
    return _checked(embeddings if isinstance(embeddings, list) else [], count), None


def _checked(vectors: list[Any], count: int) -> list[list[float]]:
    if len(vectors) != count or not all(isinstance(v, list) for v in vectors):
        raise malformed("upstream returned a malformed embeddings answer")
    return vectors
