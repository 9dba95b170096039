"""Ollama, natively: ``POST {api_base}/api/chat`` for chat, ``POST {api_base}/api/embed`` for embeddings.

Reference: https://github.com/ollama/ollama/blob/main/docs/api.md. ``api_base`` defaults to
http://localhost:11434. Both ``ollama/<model>`` and ``ollama_chat/<model>`` come here: LiteLLM
sends ``ollama_chat/`` to ``/api/chat`` and ``ollama/`` to the older ``/api/generate``; this gateway
uses ``/api/chat`` for both (the same models, with messages, tools and images in one format), and
no longer treats ``ollama_chat`` as OpenAI-compatible. Ollama has no credentials of its own; an
``api_key`` (else ``OLLAMA_API_KEY``) is sent as a bearer token, for Ollama behind an
authenticating proxy or ollama.com.

Request and answer translation: ``providers.ollama.chat``; the newline-delimited JSON stream:
``providers.ollama.stream``; errors: ``providers.ollama.errors``. ``NativeProvider`` supplies the
OpenAI ``chat``/``chat_stream``/``embeddings`` paths on top of ``generate``/``generate_stream``/
``embed``.
"""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
import orjson

from providers.contract import Operation, ProviderCall
from providers.errors import ProviderError
from providers.formats.errors import FormatError
from providers.http import shared_client
from providers.native import NativeProvider, unsupported_parameter
from providers.ollama import chat
from providers.ollama.errors import malformed, transport_error, upstream_error
from providers.ollama.stream import UpstreamRequest, read_stream
from providers.redaction import call_scrubber
from providers.schema import (
    EmbeddingRequest,
    EmbeddingResponse,
    GenerationRequest,
    GenerationResponse,
    StreamEvent,
)
from providers.usage import Usage

DEFAULT_API_BASE = "http://localhost:11434"
KEY_ENV = "OLLAMA_API_KEY"
_JSON = "application/json"


class OllamaProvider(NativeProvider):
    """``Provider`` for Ollama's native API; ``client`` defaults to the shared pool."""

    capabilities: frozenset[Operation] = frozenset({"chat", "embeddings"})
    accepted_extra = chat.ACCEPTED_EXTRA

    def __init__(self, client: httpx.AsyncClient | None = None) -> None:
        self._client = client

    def _http(self) -> httpx.AsyncClient:
        return self._client if self._client is not None else shared_client()

    # ---- chat

    async def generate(self, request: GenerationRequest, call: ProviderCall) -> GenerationResponse:
        up = self._prepare(request, call, stream=False)
        body = await self._post(call, up)
        try:
            return chat.parse_response(
                body, id=up.answer_id, model=call.upstream_model, created=int(time.time())
            )
        except FormatError as exc:
            raise malformed(f"upstream answer does not parse: {exc.message}") from None

    def generate_stream(self, request: GenerationRequest, call: ProviderCall) -> AsyncIterator[StreamEvent]:
        # Translated now, so a request that cannot be sent fails before the stream is opened.
        return read_stream(self._http(), self._prepare(request, call, stream=True), call)

    def _prepare(self, request: GenerationRequest, call: ProviderCall, *, stream: bool) -> UpstreamRequest:
        _refuse_unsendable(request, call)
        self.check_params(request, call)
        req = dataclasses.replace(request, model=call.upstream_model)
        try:
            body = chat.build_request(req, call.params, stream=stream)
        except FormatError as exc:
            raise ProviderError(400, exc.message, "invalid_request_error", param=exc.param) from None
        return self._request(call, "/api/chat", body)

    # ---- embeddings

    async def embed(self, request: EmbeddingRequest, call: ProviderCall) -> EmbeddingResponse:
        if any(not isinstance(item, str) for item in request.inputs):
            raise ProviderError(
                400,
                "Ollama embeds text only: 'input' must be a string or strings, not token ids",
                "invalid_request_error",
                "unsupported_parameter",
                "input",
            )
        body: dict[str, Any] = {"model": call.upstream_model, "input": list(request.inputs)}
        if request.dimensions is not None:
            body["dimensions"] = request.dimensions
        answer = await self._post(call, self._request(call, "/api/embed", body))
        vectors = answer.get("embeddings")
        if (
            not isinstance(vectors, list)
            or len(vectors) != len(request.inputs)
            or not all(isinstance(v, list) for v in vectors)
        ):
            raise malformed("upstream answered without one embedding per input")
        tokens = answer.get("prompt_eval_count")
        usage = Usage(tokens if isinstance(tokens, int) else 0)
        return EmbeddingResponse(call.upstream_model, vectors, usage)

    # ---- HTTP

    def _request(self, call: ProviderCall, path: str, body: dict[str, Any]) -> UpstreamRequest:
        key = call.api_key or os.environ.get(KEY_ENV)
        headers = {"content-type": _JSON, "accept": _JSON}
        if key:
            headers["authorization"] = f"Bearer {key}"
        extra = call.params.get("extra_headers")
        if isinstance(extra, Mapping):
            headers.update({str(k).lower(): str(v) for k, v in extra.items()})
        headers.update({k.lower(): v for k, v in call.extra_headers.items()})
        base = (call.api_base or DEFAULT_API_BASE).rstrip("/")
        return UpstreamRequest(
            url=base + path,
            headers=headers,
            payload=orjson.dumps(body),
            answer_id=f"chatcmpl-{uuid.uuid4().hex[:24]}",
            # The key taken from the environment is scrubbed too (an upstream may echo it).
            clean=call_scrubber(key, call.params, call.extra_headers),
        )

    async def _post(self, call: ProviderCall, up: UpstreamRequest) -> dict[str, Any]:
        try:
            resp = await self._http().post(
                up.url, content=up.payload, headers=up.headers, timeout=call.timeout
            )
        except httpx.HTTPError as exc:
            raise transport_error(exc, f"upstream timed out after {call.timeout:g}s") from exc
        if resp.status_code >= 300:
            raise upstream_error(resp.status_code, resp.content, resp.headers, up.clean)
        try:
            parsed = orjson.loads(resp.content)
        except orjson.JSONDecodeError:
            raise malformed("upstream returned a body that is not JSON") from None
        if not isinstance(parsed, dict):
            raise malformed("upstream returned JSON that is not an object")
        if "error" in parsed:
            raise upstream_error(500, resp.content, resp.headers, up.clean)
        return parsed

    async def aclose(self) -> None:
        """Nothing to release: the shared client is closed by the gateway at shutdown."""
        return None


def _refuse_unsendable(request: GenerationRequest, call: ProviderCall) -> None:
    """A ``tool_choice`` Ollama cannot express (it has none: the model decides): a 400 naming it,
    or ignored with ``drop_params``. ``"none"`` is expressible: the tools are left out."""
    if request.tool_choice in (None, "auto", "none") or call.params.get("drop_params"):
        return
    raise unsupported_parameter("tool_choice", "Ollama lets the model decide; only auto or none")
