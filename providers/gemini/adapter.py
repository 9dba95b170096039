"""Google's generative models natively: the Gemini API (Google AI Studio) here, and the base class
that ``providers.vertex_ai`` shares, since both take the same ``generateContent`` body.

Gemini API: ``POST {api_base}/v1beta/models/{model}:generateContent`` and
``:streamGenerateContent?alt=sse``, ``:batchEmbedContents`` for embeddings; ``api_base`` defaults
to https://generativelanguage.googleapis.com (a base ending in ``/v1beta`` is taken as the same);
the key goes in the ``x-goog-api-key`` header (never the URL, where logs would keep it): the
deployment's ``api_key``, else ``GEMINI_API_KEY`` or ``GOOGLE_API_KEY``.

Translation: ``providers.gemini.chat``; streams: ``providers.gemini.stream``; errors:
``providers.gemini.errors``. ``NativeProvider`` supplies the OpenAI ``chat``/``chat_stream``/
``embeddings`` paths on top of ``generate``/``generate_stream``/``embed``.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from providers.contract import Operation, ProviderCall
from providers.errors import ProviderError
from providers.formats.errors import FormatError
from providers.gemini import chat, embed
from providers.gemini.errors import malformed, transport_error, upstream_error
from providers.gemini.stream import UpstreamRequest, read_stream
from providers.http import shared_client
from providers.native import NativeProvider, unsupported_parameter
from providers.redaction import call_scrubber
from providers.schema import (
    EmbeddingRequest,
    EmbeddingResponse,
    GenerationRequest,
    GenerationResponse,
    StreamEvent,
)
from providers.usage import Usage

DEFAULT_API_BASE = "https://generativelanguage.googleapis.com"
KEY_ENVS = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
# Embedding batches in flight at once for one request.
EMBED_CONCURRENCY = 4


@dataclass(slots=True)
class Endpoint:
    """Where one call goes and how it authenticates: the URL, the auth headers, and the secret
    in them (scrubbed from whatever the upstream answers)."""

    url: str
    headers: dict[str, str]
    secret: str | None


class GoogleGenAIProvider(NativeProvider):
    """What the Gemini API and Vertex AI share; subclasses say where to send and how to sign."""

    capabilities: frozenset[Operation] = frozenset({"chat", "embeddings"})
    accepted_extra = chat.ACCEPTED_EXTRA

    def __init__(self, client: httpx.AsyncClient | None = None) -> None:
        self._client = client

    def _http(self) -> httpx.AsyncClient:
        return self._client if self._client is not None else shared_client()

    # ---- what subclasses define

    async def endpoint(self, call: ProviderCall, method: str) -> Endpoint:
        """Where ``method`` (``generateContent``, ...) on the call's model is, and its auth."""
        raise NotImplementedError

    # ---- chat

    async def generate(self, request: GenerationRequest, call: ProviderCall) -> GenerationResponse:
        payload = self._payload(request, call)
        up = await self.upstream_request(call, "generateContent", payload)
        body = await self.post(call, up)
        try:
            return chat.parse_response(
                body, id=up.answer_id, model=call.upstream_model, created=int(time.time())
            )
        except FormatError as exc:
            raise malformed(f"upstream answer does not parse: {exc.message}") from None

    def generate_stream(self, request: GenerationRequest, call: ProviderCall) -> AsyncIterator[StreamEvent]:
        # Translated now, so a request that cannot be sent fails before the stream is opened.
        payload = self._payload(request, call)
        return self._stream(call, payload)

    async def _stream(self, call: ProviderCall, payload: bytes) -> AsyncIterator[StreamEvent]:
        up = await self.upstream_request(call, "streamGenerateContent", payload, "?alt=sse")
        events = read_stream(self._http(), up, call)
        try:
            async for event in events:
                yield event
        finally:
            await events.aclose()  # drops the upstream connection when our consumer stops early

    def _payload(self, request: GenerationRequest, call: ProviderCall) -> bytes:
        self.check_params(request, call)
        if request.parallel_tool_calls is False and not call.params.get("drop_params"):
            raise unsupported_parameter(
                "parallel_tool_calls", "Gemini cannot turn parallel function calls off"
            )
        try:
            return orjson.dumps(chat.build_request(request))
        except FormatError as exc:
            raise ProviderError(400, exc.message, "invalid_request_error", param=exc.param) from None

    # ---- embeddings (Gemini API; Vertex AI overrides)

    async def embed(self, request: EmbeddingRequest, call: ProviderCall) -> EmbeddingResponse:
        model = model_name(call.upstream_model)
        try:
            batches = embed.build_batches(request, model)
        except FormatError as exc:
            raise ProviderError(400, exc.message, "invalid_request_error", param=exc.param) from None

        async def one(body: dict[str, Any]) -> tuple[list[list[float]], int]:
            answer = await self.post(
                call, await self.upstream_request(call, "batchEmbedContents", orjson.dumps(body))
            )
            try:
                vectors, counted = embed.parse_batch(answer, len(body["requests"]))
            except FormatError as exc:
                raise malformed(f"upstream answer does not parse: {exc.message}") from None
            return vectors, embed.estimated_tokens(body) if counted is None else counted

        results = await gather_limited([one(b) for b in batches])
        vectors = [v for batch, _ in results for v in batch]
        return EmbeddingResponse(call.upstream_model, vectors, Usage(sum(t for _, t in results)))

    # ---- HTTP

    async def upstream_request(
        self, call: ProviderCall, method: str, payload: bytes, query: str = ""
    ) -> UpstreamRequest:
        target = await self.endpoint(call, method)
        headers = {"content-type": "application/json"}
        extra = call.params.get("extra_headers")
        if isinstance(extra, Mapping):
            headers.update({str(k).lower(): str(v) for k, v in extra.items()})
        headers.update({k.lower(): v for k, v in call.extra_headers.items()})
        headers.update(target.headers)
        return UpstreamRequest(
            url=target.url + query,
            headers=headers,
            payload=payload,
            answer_id=f"chatcmpl-{uuid.uuid4().hex[:24]}",
            clean=call_scrubber(target.secret, call.params, call.extra_headers),
        )

    async def post(self, call: ProviderCall, up: UpstreamRequest) -> Mapping[str, Any]:
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


class GeminiProvider(GoogleGenAIProvider):
    """``Provider`` for the Gemini API (Google AI Studio), keyed by ``x-goog-api-key``."""

    async def endpoint(self, call: ProviderCall, method: str) -> Endpoint:
        key = call.api_key or next((os.environ[n] for n in KEY_ENVS if os.environ.get(n)), None)
        base = (call.api_base or DEFAULT_API_BASE).rstrip("/").removesuffix("/v1beta")
        url = f"{base}/v1beta/models/{quote(model_name(call.upstream_model), safe='')}:{method}"
        return Endpoint(url, {"x-goog-api-key": key} if key else {}, key)


def model_name(upstream_model: str) -> str:
    """The model id without Google's ``models/`` resource prefix, which some configs include."""
    return upstream_model.removeprefix("models/")


async def gather_limited(calls: list[Any]) -> list[Any]:
    """Await ``calls`` with at most ``EMBED_CONCURRENCY`` in flight; the rest cancelled on a failure."""
    gate = asyncio.Semaphore(EMBED_CONCURRENCY)

    async def limited(coro: Any) -> Any:
        async with gate:
            return await coro

    tasks = [asyncio.ensure_future(limited(c)) for c in calls]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        raise
