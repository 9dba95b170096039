"""Anthropic's Claude models on Vertex AI (``vertex_ai/claude-*`` deployments).

References: https://cloud.google.com/vertex-ai/generative-ai/docs/partner-models/claude and
https://docs.anthropic.com/en/api/claude-on-vertex-ai (and the official ``anthropic`` SDK's
``AnthropicVertex`` client, which builds the same requests):
``POST https://{location}-aiplatform.googleapis.com/v1/projects/{project}/locations/{location}/
publishers/anthropic/models/{model}:rawPredict`` (``:streamRawPredict`` for a stream: the
Messages API's server-sent events, unchanged). The body is a Messages API body without ``model``
(the URL names it) and with ``anthropic_version: "vertex-2023-10-16"`` in the body instead of the
``anthropic-version`` header; the credential is Vertex's OAuth bearer token, not ``x-api-key``;
``anthropic-beta`` still goes as a header. Model ids carry a version after ``@``
(``claude-sonnet-4@20250514``).

Everything else is the Anthropic adapter's (``providers.anthropic``): the request translation
and deployment defaults (``build_body``), the answer and stream parsing, the error mapping.
Errors come in two shapes: Anthropic's (``{"type": "error", "error": {...}}``) from the model,
Google's (``{"error": {"code", "status", ...}}``) from Vertex's front (credentials, quota, a
model not enabled in the project); each is read with its own provider's mapping.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import httpx
import orjson

from providers.anthropic import chat as anthropic_chat
from providers.anthropic import errors as anthropic_errors
from providers.anthropic.adapter import AnthropicProvider
from providers.anthropic.chat import UpstreamRequest, build_body, json_mode
from providers.anthropic.stream import read_stream
from providers.contract import ProviderCall
from providers.errors import ProviderError
from providers.formats.anthropic_messages import parse_response
from providers.formats.errors import FormatError
from providers.gemini import errors as google_errors
from providers.gemini.adapter import Endpoint, model_name
from providers.redaction import Scrubber, call_scrubber
from providers.schema import GenerationRequest, GenerationResponse, StreamEvent

VERTEX_ANTHROPIC_VERSION = "vertex-2023-10-16"
PUBLISHER = "anthropic"

# (call, method, publisher) -> the URL and bearer token of that method on the call's model.
EndpointOf = Callable[[ProviderCall, str, str], Awaitable[Endpoint]]


def is_claude(upstream_model: str) -> bool:
    """Whether a ``vertex_ai/`` deployment's model is Anthropic's (LiteLLM routes ``claude-*`` so)."""
    return model_name(upstream_model).startswith("claude-")


class VertexClaude(AnthropicProvider):
    """The Anthropic adapter with Vertex AI's URL, body and credentials."""

    def __init__(self, client: httpx.AsyncClient | None, endpoint: EndpointOf) -> None:
        super().__init__(client)
        self._endpoint = endpoint

    async def generate(self, request: GenerationRequest, call: ProviderCall) -> GenerationResponse:
        body, req = build_body(request, call, stream=False)
        up = await self._prepare(body, json_mode(req), call, "rawPredict")
        answer = await self._post(up, call)
        try:
            return parse_response(answer, created=int(time.time()), json_mode=up.json_mode)
        except FormatError as exc:
            raise anthropic_errors.malformed(f"upstream answer does not parse: {exc.message}") from None

    def generate_stream(self, request: GenerationRequest, call: ProviderCall) -> AsyncIterator[StreamEvent]:
        # Translated now, so a request that cannot be sent fails before the stream is opened.
        body, req = build_body(request, call, stream=True)
        return self._stream(body, json_mode(req), call)

    async def _stream(
        self, body: dict[str, Any], as_json: bool, call: ProviderCall
    ) -> AsyncIterator[StreamEvent]:
        up = await self._prepare(body, as_json, call, "streamRawPredict")
        events = read_stream(self._http(), up, call)
        try:
            async for event in events:
                yield event
        finally:
            await events.aclose()  # drops the upstream connection when our consumer stops early

    async def _prepare(
        self, body: dict[str, Any], as_json: bool, call: ProviderCall, method: str
    ) -> UpstreamRequest:
        target = await self._endpoint(call, method, PUBLISHER)
        payload = {k: v for k, v in body.items() if k != "model"}
        payload["anthropic_version"] = VERTEX_ANTHROPIC_VERSION
        sent = anthropic_chat.headers(None, call.params, call.extra_headers)
        del sent["anthropic-version"]  # the version travels in the body on Vertex
        sent.update(target.headers)
        return UpstreamRequest(
            url=httpx.URL(target.url),
            headers=sent,
            payload=orjson.dumps(payload),
            json_mode=as_json,
            clean=call_scrubber(target.secret, call.params, call.extra_headers),
            read_error=vertex_error,
        )


def vertex_error(
    status: int, body: bytes, headers: Mapping[str, str] | None, clean: Scrubber
) -> ProviderError:
    """An error answer read as Anthropic's when it is in Anthropic's shape, else as Google's."""
    try:
        parsed = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict) and parsed.get("type") == "error":
        return anthropic_errors.upstream_error(status, body, headers, clean)
    return google_errors.upstream_error(status, body, headers, clean)
