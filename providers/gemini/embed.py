"""Gemini API embeddings: ``POST .../models/{model}:batchEmbedContents``.

Reference: https://ai.google.dev/api/embeddings#method:-models.batchembedcontents. Body
``{"requests": [{"model": "models/{model}", "content": {"parts": [{"text"}]}, "taskType"?,
"outputDimensionality"?}]}`` (at most 100 requests); answer ``{"embeddings": [{"values": [...]}]}``
in input order. Gemini reports no token counts for embeddings, so usage is zero tokens.
``dimensions`` is ``outputDimensionality``; LiteLLM's ``task_type`` extra is ``taskType``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from providers.formats.errors import FormatError
from providers.schema import EmbeddingRequest

BATCH_LIMIT = 100


def text_inputs(request: EmbeddingRequest) -> list[str]:
    """The inputs as strings; token-id inputs are a 400 (Google embeds text only)."""
    if any(not isinstance(item, str) for item in request.inputs):
        raise FormatError(
            "Google embeds text only: 'input' must be a string or strings, not token ids", "input"
        )
    return [str(item) for item in request.inputs]


def build_batches(request: EmbeddingRequest, model: str) -> list[dict[str, Any]]:
    texts = text_inputs(request)
    task = request.extra.get("task_type")
    batches = []
    for start in range(0, len(texts), BATCH_LIMIT):
        items = []
        for text in texts[start : start + BATCH_LIMIT]:
            item: dict[str, Any] = {"model": f"models/{model}", "content": {"parts": [{"text": text}]}}
            if isinstance(task, str):
                item["taskType"] = task
            if request.dimensions is not None:
                item["outputDimensionality"] = request.dimensions
            items.append(item)
        batches.append({"requests": items})
    return batches


def parse_batch(body: Mapping[str, Any], expected: int) -> list[list[float]]:
    embeddings = body.get("embeddings")
    if not isinstance(embeddings, list) or len(embeddings) != expected:
        raise FormatError("'embeddings' must hold one embedding per input", "embeddings")
    vectors = []
    for i, item in enumerate(embeddings):
        values = item.get("values") if isinstance(item, Mapping) else None
        if not isinstance(values, list):
            raise FormatError(f"'embeddings.{i}.values' must be an array", f"embeddings.{i}.values")
        vectors.append(values)
    return vectors
