"""Vertex AI text embeddings: ``POST .../publishers/google/models/{model}:predict``.

Reference: https://cloud.google.com/vertex-ai/generative-ai/docs/model-reference/text-embeddings-api.
Body ``{"instances": [{"content": text, "task_type"?}], "parameters": {"outputDimensionality"?}}``;
answer ``{"predictions": [{"embeddings": {"values": [...], "statistics": {"token_count": N,
"truncated": bool}}}]}`` in input order. At most 250 instances a request, and one for
``gemini-embedding-*`` models. Usage is the sum of the ``token_count``s.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from providers.formats.errors import FormatError
from providers.gemini.embed import text_inputs
from providers.schema import EmbeddingRequest

BATCH_LIMIT = 250


def build_batches(request: EmbeddingRequest, model: str) -> list[dict[str, Any]]:
    texts = text_inputs(request)
    limit = 1 if model.startswith("gemini-embedding") else BATCH_LIMIT
    task = request.extra.get("task_type")
    parameters: dict[str, Any] = {}
    if request.dimensions is not None:
        parameters["outputDimensionality"] = request.dimensions
    batches = []
    for start in range(0, len(texts), limit):
        instances = [
            {"content": t, **({"task_type": task} if isinstance(task, str) else {})}
            for t in texts[start : start + limit]
        ]
        body: dict[str, Any] = {"instances": instances}
        if parameters:
            body["parameters"] = parameters
        batches.append(body)
    return batches


def parse_batch(body: Mapping[str, Any], expected: int) -> tuple[list[list[float]], int]:
    """The vectors of one answer and the tokens it counted."""
    predictions = body.get("predictions")
    if not isinstance(predictions, list) or len(predictions) != expected:
        raise FormatError("'predictions' must hold one prediction per input", "predictions")
    vectors, tokens = [], 0
    for i, item in enumerate(predictions):
        embedding = item.get("embeddings") if isinstance(item, Mapping) else None
        values = embedding.get("values") if isinstance(embedding, Mapping) else None
        if not isinstance(values, list):
            raise FormatError(
                f"'predictions.{i}.embeddings.values' must be an array", f"predictions.{i}.embeddings.values"
            )
        vectors.append(values)
        stats = embedding.get("statistics") if isinstance(embedding, Mapping) else None
        count = stats.get("token_count") if isinstance(stats, Mapping) else None
        if isinstance(count, int | float):
            tokens += int(count)
    return vectors, tokens
