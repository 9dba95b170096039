"""The native Anthropic Messages adapter: ``POST {api_base}/v1/messages``, plain and streamed, and
``POST {api_base}/v1/messages/count_tokens`` for the Messages door's ``count_tokens``.

Request translation is in ``providers.anthropic.chat`` (with the codec
``providers.formats.anthropic_messages``), stream reading in ``providers.anthropic.stream`` and
error mapping in ``providers.anthropic.errors``. ``NativeProvider`` supplies the OpenAI
``chat``/``chat_stream`` paths on top of ``generate``/``generate_stream``; the Messages and
Responses doors call those two directly.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

from providers.anthropic.chat import OPENAI_EXTRAS, UpstreamRequest, prepare, prepare_count
from providers.anthropic.errors import malformed, transport_error
from providers.anthropic.stream import read_stream
from providers.contract import Operation, ProviderCall
from providers.formats.anthropic_messages import parse_response
from providers.formats.errors import FormatError
from providers.http import shared_client
from providers.native import NativeProvider
from providers.schema import GenerationRequest, GenerationResponse, StreamEvent


class AnthropicProvider(NativeProvider):
    """``Provider`` for Anthropic's Messages API; ``client`` defaults to the shared pool."""

    capabilities: frozenset[Operation] = frozenset({"chat"})
    accepted_extra = OPENAI_EXTRAS

    def __init__(self, client: httpx.AsyncClient | None = None) -> None:
        self._client = client

    def _http(self) -> httpx.AsyncClient:
        return self._client if self._client is not None else shared_client()

    async def generate(self, request: GenerationRequest, call: ProviderCall) -> GenerationResponse:
        up = prepare(request, call, stream=False)
        body = await self._post(up, call)
        try:
            return parse_response(body, created=int(time.time()), json_mode=up.json_mode)
        except FormatError as exc:
            raise malformed(f"upstream answer does not parse: {exc.message}") from None

    async def count_tokens(self, request: GenerationRequest, call: ProviderCall) -> int:
        """The prompt's input tokens as Anthropic counts them (its ``count_tokens`` endpoint, which
        generates nothing and is free): the Messages door's ``count_tokens`` answers with it."""
        body = await self._post(prepare_count(request, call), call)
        counted = body.get("input_tokens")
        if not isinstance(counted, int) or isinstance(counted, bool) or counted < 0:
            raise malformed("upstream count_tokens answer has no input_tokens count")
        return counted

    async def _post(self, up: UpstreamRequest, call: ProviderCall) -> dict[str, Any]:
        """POST ``up``; the answer's JSON object, or the provider's error mapped."""
        try:
            resp = await self._http().post(
                up.url, content=up.payload, headers=up.headers, timeout=call.timeout
            )
        except httpx.HTTPError as exc:
            raise transport_error(exc, f"upstream timed out after {call.timeout:g}s") from exc
        if resp.status_code >= 300:
            raise up.read_error(resp.status_code, resp.content, resp.headers, up.clean)
        try:
            body = orjson.loads(resp.content)
        except orjson.JSONDecodeError:
            raise malformed("upstream returned a body that is not JSON") from None
        if not isinstance(body, dict):
            raise malformed("upstream returned JSON that is not an object")
        return body

    def generate_stream(self, request: GenerationRequest, call: ProviderCall) -> AsyncIterator[StreamEvent]:
        # Translated now, so a request that cannot be sent fails before the stream is opened.
        return read_stream(self._http(), prepare(request, call, stream=True), call)

    async def aclose(self) -> None:
        """Nothing to release: the shared client is closed by the gateway at shutdown."""
        return None
