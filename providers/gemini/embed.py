"""Gemini API embeddings: ``POST .../models/{model}:batchEmbedContents``.

Reference: https://ai.google.dev/api/embeddings#method:-models.batchembedcontents. Body
``{"requests": [{"model": "models/{model}", "content": {"parts": [{"text"}]}, "taskType"?,
"outputDimensionality"?}]}`` (at most 100 requests); answer ``{"embeddings": [{"values": [...]}],
"usageMetadata": {"promptTokenCount", "promptTokenDetails"}}`` in input order.
``dimensions`` is ``outputDimensionality``; LiteLLM's ``task_type`` extra is ``taskType``.

Usage: ``usageMetadata.promptTokenCount`` (https://ai.google.dev/api/embeddings#EmbeddingUsageMetadata)
is the batch's input tokens as Google counts them, in the same answer (no extra round trip).
Answers without it (it is optional: older models and API surfaces leave it out; ``countTokens``
would cost a request per batch) are charged by an estimate instead of zero: ``ESTIMATE_CHARS``
characters a token, at least one a text, rounded up (``estimated_tokens``), the gateway's rule for
prompts it cannot count.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from providers.formats.errors import FormatError
from providers.schema import EmbeddingRequest

BATCH_LIMIT = 100
ESTIMATE_CHARS = 4


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


def estimated_tokens(batch: Mapping[str, Any]) -> int:
    """A batch's input tokens by the stated estimate, for an answer that does not count them."""
    total = 0
    for item in batch["requests"]:
        chars = sum(len(part["text"]) for part in item["content"]["parts"])
        total += max(1, -(-chars // ESTIMATE_CHARS))
    return total


def parse_batch(body: Mapping[str, Any], expected: int) -> tuple[list[list[float]], int | None]:
    """The vectors of one answer, and its ``usageMetadata.promptTokenCount`` (None without one)."""
    embeddings = body.get("embeddings")
    if not isinstance(embeddings, list) or len(embeddings) != expected:
        raise FormatError("'embeddings' must hold one embedding per input", "embeddings")
    vectors = []
    for i, item in enumerate(embeddings):
        values = item.get("values") if isinstance(item, Mapping) else None
        if not isinstance(values, list):
            raise FormatError(f"'embeddings.{i}.values' must be an array", f"embeddings.{i}.values")
        vectors.append(values)
    usage = body.get("usageMetadata")
    counted = usage.get("promptTokenCount") if isinstance(usage, Mapping) else None
    if isinstance(counted, bool) or not isinstance(counted, int) or counted < 0:
        counted = None
    return vectors, counted
