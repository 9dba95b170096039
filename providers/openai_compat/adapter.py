"""OpenAI-compatible chat completions over HTTP (OpenAI, vLLM, Groq, Together, Mistral, ...).

Wire format: https://platform.openai.com/docs/api-reference/chat/create (request, response)
and https://platform.openai.com/docs/api-reference/chat-streaming (SSE chunks, ``[DONE]``).
Bodies pass through: the request only gets ``model`` replaced (and, for streams, usage
requested); responses and stream events are forwarded as the upstream sent them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

from providers.base import (
    ProviderCall,
    ProviderError,
    ProviderResponse,
    ProviderTimeoutError,
    ProviderUnreachableError,
    parse_usage,
)
from providers.http import shared_client

DEFAULT_API_BASE = "https://api.openai.com/v1"
_JSON = "application/json"


class OpenAICompatProvider:
    """``ChatProvider`` for OpenAI-format upstreams; ``client`` defaults to the shared pool."""

    def __init__(self, client: httpx.AsyncClient | None = None) -> None:
        self._client = client
        self._urls: dict[str, httpx.URL] = {}

    def _http(self) -> httpx.AsyncClient:
        return self._client if self._client is not None else shared_client()

    def _url(self, call: ProviderCall) -> httpx.URL:
        # Parsed once per api_base: URL parsing is a visible cost per request otherwise.
        base = call.api_base or DEFAULT_API_BASE
        url = self._urls.get(base)
        if url is None:
            url = httpx.URL(base.rstrip("/") + "/chat/completions")
            self._urls[base] = url
        return url

    @staticmethod
    def _headers(call: ProviderCall) -> dict[str, str]:
        headers = {"content-type": _JSON, "accept": _JSON}
        if call.api_key:
            headers["authorization"] = f"Bearer {call.api_key}"
        extra = call.params.get("extra_headers")
        if isinstance(extra, dict):
            headers.update({str(k): str(v) for k, v in extra.items()})
        if call.extra_headers:
            headers.update(call.extra_headers)
        return headers

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
        client = self._http()
        try:
            resp = await client.post(
                self._url(call),
                content=self._payload(call, False),
                headers=self._headers(call),
                timeout=call.timeout,
            )
        except httpx.TimeoutException as exc:
            raise ProviderTimeoutError(f"upstream timed out after {call.timeout:g}s") from exc
        except (httpx.NetworkError, httpx.RemoteProtocolError, httpx.UnsupportedProtocol) as exc:
            raise ProviderUnreachableError(f"upstream unreachable: {type(exc).__name__}") from exc
        body = resp.content
        if resp.status_code >= 400:
            raise ProviderError.from_upstream(resp.status_code, body, resp.headers)
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ProviderError(502, "upstream returned a body that is not JSON", "api_error") from None
        usage = parse_usage(parsed.get("usage")) if isinstance(parsed, dict) else None
        return ProviderResponse(resp.status_code, body, usage)

    async def chat_stream(self, call: ProviderCall) -> AsyncIterator[bytes]:
        client = self._http()
        read_timeout = call.stream_timeout or call.timeout
        request = client.build_request(
            "POST",
            self._url(call),
            content=self._payload(call, True),
            headers=self._headers(call),
            timeout=httpx.Timeout(call.timeout, read=read_timeout, connect=min(10.0, call.timeout)),
        )
        try:
            resp = await client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            raise ProviderTimeoutError(f"upstream timed out after {read_timeout:g}s") from exc
        except (httpx.NetworkError, httpx.RemoteProtocolError, httpx.UnsupportedProtocol) as exc:
            raise ProviderUnreachableError(f"upstream unreachable: {type(exc).__name__}") from exc
        # Closing the response (on any exit, including the consumer closing us mid-stream)
        # drops the connection, which cancels the upstream request.
        try:
            if resp.status_code >= 400:
                raise ProviderError.from_upstream(resp.status_code, await resp.aread(), resp.headers)
            buf = b""
            done = False
            try:
                async for data in resp.aiter_bytes():
                    if done:
                        # Read to the end of the body (after [DONE]) so the connection goes back
                        # to the pool instead of being closed.
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
                            break
                        if event.startswith(b":"):
                            continue  # SSE comment / keep-alive
                        if event.startswith(b'data: {"error"') or event.startswith(b'data:{"error"'):
                            raise ProviderError.from_upstream(500, event[event.find(b"{") :].strip())
                        yield event
            except httpx.TimeoutException as exc:
                raise ProviderTimeoutError(f"upstream stream stalled for {read_timeout:g}s") from exc
            except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                raise ProviderUnreachableError(f"upstream stream broke: {type(exc).__name__}") from exc
        finally:
            await resp.aclose()

    async def aclose(self) -> None:
        """Nothing to release: the shared client is closed by the gateway at shutdown."""
        return None
