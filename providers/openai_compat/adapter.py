"""OpenAI-compatible upstreams over HTTP (OpenAI, vLLM, Groq, Together, Mistral, ...).

Wire formats: https://platform.openai.com/docs/api-reference/chat/create (chat request and
response), https://platform.openai.com/docs/api-reference/chat-streaming (SSE chunks, ``[DONE]``),
https://platform.openai.com/docs/api-reference/completions (legacy completions, same framing) and
https://platform.openai.com/docs/api-reference/embeddings. Raw bodies pass through: the request
only gets ``model`` replaced (and, for streams, usage requested); responses and stream events are
forwarded as the upstream sent them. The typed path (``generate``) translates with
``providers.formats.openai_chat`` on top of the same raw calls.

Upstreams that speak this format at other addresses with other credentials (Azure OpenAI, Azure
AI model inference) subclass the adapter and override ``_url``, ``_headers`` and ``_error`` only,
so their bytes pass through the same way.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
import orjson

from providers.contract import Operation, ProviderCall, ProviderResponse
from providers.errors import ProviderError, ProviderTimeoutError, ProviderUnreachableError
from providers.formats.openai_chat import parse_usage
from providers.http import post as http_post
from providers.http import post_stream, shared_client
from providers.openai_compat.typed import generate_stream_via_chat, generate_via_chat
from providers.redaction import call_scrubber
from providers.schema import GenerationRequest, GenerationResponse, StreamEvent

DEFAULT_API_BASE = "https://api.openai.com/v1"
CAPABILITIES: frozenset[Operation] = frozenset({"chat", "embeddings", "completions"})
_PATHS: dict[Operation, str] = {
    "chat": "/chat/completions",
    "completions": "/completions",
    "embeddings": "/embeddings",
}
_JSON = "application/json"
# Stream events that carry an error instead of a chunk: OpenAI's ``{"error": ...}``, vLLM's
# ``{"object": "error", ...}``, and a named SSE ``error`` event.
_ERROR_EVENT_STARTS = (
    b'data: {"error"',
    b'data:{"error"',
    b'data: {"object":"error"',
    b'data: {"object": "error"',
    b"event: error",
    b"event:error",
)


class OpenAICompatProvider:
    """``Provider`` for OpenAI-format upstreams; ``client`` defaults to the shared pool."""

    capabilities = CAPABILITIES

    def __init__(self, client: httpx.AsyncClient | None = None) -> None:
        self._client = client
        self._urls: dict[tuple[str, Operation], httpx.URL] = {}

    def _http(self) -> httpx.AsyncClient:
        return self._client if self._client is not None else shared_client()

    def _url(self, call: ProviderCall, operation: Operation = "chat") -> httpx.URL:
        # Parsed once per api_base: URL parsing is a visible cost per request otherwise.
        base = call.api_base or DEFAULT_API_BASE
        url = self._urls.get((base, operation))
        if url is None:
            url = httpx.URL(base.rstrip("/") + _PATHS[operation])
            self._urls[(base, operation)] = url
        return url

    @staticmethod
    def _headers(call: ProviderCall) -> dict[str, str]:
        headers = {"content-type": _JSON, "accept": _JSON}
        if call.api_key:
            headers["authorization"] = f"Bearer {call.api_key}"
        return with_extra_headers(headers, call)

    @staticmethod
    def _payload(call: ProviderCall, stream: bool) -> bytes:
        body: dict[str, Any] = dict(call.body)
        body["model"] = call.upstream_model
        if stream:
            body["stream"] = True
            # Always ask for usage so accounting never loses tokens; the gateway strips the
            # usage chunk again if the client did not ask for it.
            options = body.get("stream_options")
            options = dict(options) if isinstance(options, dict) else {}
            options["include_usage"] = True
            body["stream_options"] = options
        elif "stream" in body:
            body["stream"] = False
        return orjson.dumps(body)

    async def chat(self, call: ProviderCall) -> ProviderResponse:
        return await self._post(call, "chat", self._payload(call, False))

    async def completions(self, call: ProviderCall) -> ProviderResponse:
        return await self._post(call, "completions", self._payload(call, False))

    async def embeddings(self, call: ProviderCall) -> ProviderResponse:
        body = dict(call.body)
        body["model"] = call.upstream_model
        return await self._post(call, "embeddings", orjson.dumps(body))

    def chat_stream(self, call: ProviderCall) -> AsyncIterator[bytes]:
        return self._stream(call, "chat")

    def completions_stream(self, call: ProviderCall) -> AsyncIterator[bytes]:
        return self._stream(call, "completions")

    # ---- the typed path: the same calls, translated by the OpenAI Chat codec

    async def generate(self, request: GenerationRequest, call: ProviderCall) -> GenerationResponse:
        return await generate_via_chat(self, request, call)

    def generate_stream(self, request: GenerationRequest, call: ProviderCall) -> AsyncIterator[StreamEvent]:
        return generate_stream_via_chat(self, request, call)

    # ---- raw HTTP

    async def _post(self, call: ProviderCall, operation: Operation, payload: bytes) -> ProviderResponse:
        try:
            url = self._url(call, operation)
            resp = await http_post(self._client, url, self._headers(call), payload, call.timeout)
        except httpx.HTTPError as exc:
            raise _transport_error(exc, f"upstream timed out after {call.timeout:g}s") from exc
        body = resp.content
        if resp.status_code >= 300:
            raise self._error(call, resp.status_code, body, resp.headers)
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise _malformed("upstream returned a body that is not JSON") from None
        if not isinstance(parsed, dict):
            raise _malformed("upstream returned JSON that is not an object")
        return ProviderResponse(resp.status_code, body, parse_usage(parsed.get("usage")))

    async def _stream(self, call: ProviderCall, operation: Operation) -> AsyncIterator[bytes]:
        read_timeout = call.stream_timeout or call.timeout
        url, headers, payload = self._url(call, operation), self._headers(call), self._payload(call, True)
        try:
            resp = await post_stream(
                self._client, url, headers, payload, call.timeout, min(10.0, call.timeout), read_timeout
            )
        except httpx.HTTPError as exc:
            raise _transport_error(exc, f"upstream timed out after {read_timeout:g}s") from exc
        # Closing the response (on any exit, including the consumer closing us mid-stream)
        # drops the connection, which cancels the upstream request.
        try:
            if resp.status_code >= 300:
                try:
                    body = await resp.aread()
                except httpx.HTTPError as exc:
                    raise _transport_error(exc, f"upstream timed out after {read_timeout:g}s") from exc
                raise self._error(call, resp.status_code, body, resp.headers)
            buf = b""
            done = False
            # Each event must follow the last within read_timeout. httpx's read timeout alone
            # would not see an upstream that keeps the socket busy (keep-alive comments, a byte
            # at a time) without ever sending an event.
            last_event = time.monotonic()
            try:
                async for data in resp.aiter_bytes():
                    stalled = time.monotonic() - last_event > read_timeout
                    if done:
                        # Read to the end of the body (after [DONE]) so the connection goes back
                        # to the pool instead of being closed; but not forever.
                        if stalled:
                            break
                        continue
                    buf = buf + data if buf else data
                    if b"\r" in buf:
                        buf = buf.replace(b"\r\n", b"\n")
                    while True:
                        end = buf.find(b"\n\n")
                        if end < 0:
                            break
                        event = buf[: end + 2]
                        buf = buf[end + 2 :]
                        if event.startswith(b"data: [DONE]") or event.startswith(b"data:[DONE]"):
                            done = True
                            last_event = time.monotonic()
                            break
                        if event.startswith(b":"):
                            continue  # SSE comment / keep-alive
                        if event.startswith(_ERROR_EVENT_STARTS):
                            raise self._error(call, 500, event[event.find(b"{") :].strip())
                        if (
                            event.startswith(b"data")
                            and not event.endswith(b"}\n\n")  # the usual event: no copy made
                            and not event.rstrip().endswith(b"}")
                        ):
                            # Cut short or garbled: the client's SDK could not parse it either.
                            raise _malformed("upstream sent a malformed stream event")
                        stalled = False
                        yield event
                        # From here: the time our consumer took is not the upstream's stall.
                        last_event = time.monotonic()
                    if stalled and not done:
                        raise ProviderTimeoutError(f"upstream sent no stream event for {read_timeout:g}s")
            except httpx.HTTPError as exc:
                raise _transport_error(
                    exc, f"upstream stream stalled for {read_timeout:g}s", "upstream stream broke"
                ) from exc
            if not done:
                # A stream ends with [DONE]; a body that ends without it was cut short (the
                # upstream crashed or a proxy closed the connection), even if cleanly.
                raise ProviderError(
                    502, "upstream closed the stream before [DONE]", "api_error", "stream_truncated"
                )
        finally:
            await resp.aclose()

    def _error(
        self, call: ProviderCall, status: int, body: bytes, headers: Mapping[str, str] | None = None
    ) -> ProviderError:
        """An upstream error answer as a ``ProviderError``; subclasses read their provider's codes."""
        return _upstream_error(call, status, body, headers)

    async def aclose(self) -> None:
        """Nothing to release: the shared client is closed by the gateway at shutdown."""
        return None


def with_extra_headers(headers: dict[str, str], call: ProviderCall) -> dict[str, str]:
    """``headers`` plus the deployment's ``extra_headers`` and the call's own (later ones win)."""
    extra = call.params.get("extra_headers")
    if isinstance(extra, dict):
        headers.update({str(k): str(v) for k, v in extra.items()})
    if call.extra_headers:
        headers.update(call.extra_headers)
    return headers


def _upstream_error(
    call: ProviderCall, status: int, body: bytes, headers: Mapping[str, str] | None = None
) -> ProviderError:
    """The upstream's error, scrubbed of this call's secrets (an upstream may echo what it got)."""
    if status < 400:
        # Redirects are not followed: an api_base that redirects is misconfigured.
        return ProviderError(
            502, f"upstream answered HTTP {status} (check api_base)", "api_error", "upstream_redirect"
        )
    return ProviderError.from_upstream(
        status, body, headers, call_scrubber(call.api_key, call.params, call.extra_headers)
    )


def _malformed(message: str) -> ProviderError:
    return ProviderError(502, message, "api_error", "upstream_malformed_response")


def _transport_error(
    exc: httpx.HTTPError, timeout_message: str, broke: str = "upstream unreachable"
) -> ProviderError:
    """An httpx failure as the ``ProviderError`` the router understands (never an unexpected 500)."""
    if isinstance(exc, httpx.TimeoutException):
        return ProviderTimeoutError(timeout_message)
    if isinstance(exc, httpx.DecodingError):
        return _malformed("upstream sent a body that could not be decoded (Content-Encoding)")
    if isinstance(exc, httpx.TransportError):
        return ProviderUnreachableError(f"{broke}: {type(exc).__name__}")
    return ProviderError(502, f"upstream call failed: {type(exc).__name__}", "api_error", "upstream_error")
