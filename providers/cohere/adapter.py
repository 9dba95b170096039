"""The native Cohere adapter: ``POST {api_base}/v2/chat`` (plain and streamed) and ``/v2/embed``.

Request and answer translation is in ``providers.cohere.chat``, stream reading in
``providers.cohere.stream``, embeddings in ``providers.cohere.embed`` and error mapping in
``providers.cohere.errors``. ``NativeProvider`` supplies the OpenAI ``chat``/``chat_stream`` and
``embeddings`` paths on top of ``generate``/``generate_stream``/``embed``; the Messages and
Responses doors call ``generate``/``generate_stream`` directly. ``model`` is ``cohere/<model>``
(or LiteLLM's ``cohere_chat/<model>``); the key is the deployment's ``api_key``, else
``COHERE_API_KEY`` (or ``CO_API_KEY``) from the environment.

Rerank (``/v2/rerank``) is not served: the gateway has no rerank door to reach it through.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
import orjson

from providers.cohere import chat, embed
from providers.cohere.errors import malformed, transport_error, upstream_error
from providers.cohere.stream import read_stream
from providers.contract import Operation, ProviderCall
from providers.errors import ProviderError
from providers.formats.errors import FormatError
from providers.http import shared_client
from providers.native import NativeProvider
from providers.schema import (
    EmbeddingRequest,
    EmbeddingResponse,
    GenerationRequest,
    GenerationResponse,
    StreamEvent,
)
from providers.usage import Usage

# Embed calls in flight at once for one request of more than 96 inputs.
_EMBED_CONCURRENCY = 4


class CohereProvider(NativeProvider):
    """``Provider`` for Cohere's v2 API; ``client`` defaults to the shared pool."""

    capabilities: frozenset[Operation] = frozenset({"chat", "embeddings"})
    accepted_extra = chat.ACCEPTED_EXTRA

    def __init__(self, client: httpx.AsyncClient | None = None) -> None:
        self._client = client

    def _http(self) -> httpx.AsyncClient:
        return self._client if self._client is not None else shared_client()

    async def generate(self, request: GenerationRequest, call: ProviderCall) -> GenerationResponse:
        self.check_params(request, call)
        up = chat.prepare(request, call, stream=False)
        body = await self._post(up, call)
        try:
            return chat.parse_response(body, model=call.upstream_model, created=int(time.time()))
        except FormatError as exc:
            raise malformed(f"upstream answer does not parse: {exc.message}") from None

    def generate_stream(self, request: GenerationRequest, call: ProviderCall) -> AsyncIterator[StreamEvent]:
        # Translated now, so a request that cannot be sent fails before the stream is opened.
        self.check_params(request, call)
        return read_stream(self._http(), chat.prepare(request, call, stream=True), call)

    async def embed(self, request: EmbeddingRequest, call: ProviderCall) -> EmbeddingResponse:
        try:
            bodies = embed.build_requests(request, call.upstream_model, call.params)
        except FormatError as exc:
            raise ProviderError(400, exc.message, "invalid_request_error", param=exc.param) from None
        gate = asyncio.Semaphore(_EMBED_CONCURRENCY)

        async def one(body: dict[str, Any]) -> tuple[list[list[float]], int]:
            async with gate:
                answer = await self._post(chat.upstream_request(call, "/v2/embed", body, stream=False), call)
            try:
                return embed.parse_response(answer, len(body["texts"]))
            except FormatError as exc:
                raise malformed(f"upstream answer does not parse: {exc.message}") from None

        results = await asyncio.gather(*(one(b) for b in bodies))
        vectors = [v for batch, _ in results for v in batch]
        return EmbeddingResponse(call.upstream_model, vectors, Usage(sum(t for _, t in results)))

    async def _post(self, up: chat.UpstreamRequest, call: ProviderCall) -> Mapping[str, Any]:
        try:
            resp = await self._http().post(
                up.url, content=up.payload, headers=up.headers, timeout=call.timeout
            )
        except httpx.HTTPError as exc:
            raise transport_error(exc, f"upstream timed out after {call.timeout:g}s") from exc
        if resp.status_code >= 300:
            raise upstream_error(resp.status_code, resp.content, resp.headers, up.clean)
        try:
            body = orjson.loads(resp.content)
        except orjson.JSONDecodeError:
            raise malformed("upstream returned a body that is not JSON") from None
        if not isinstance(body, dict):
            raise malformed("upstream returned JSON that is not an object")
        return body

    async def aclose(self) -> None:
        """Nothing to release: the shared client is closed by the gateway at shutdown."""
        return None
