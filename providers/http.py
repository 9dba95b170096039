"""The process-wide pooled HTTP client every HTTP provider adapter shares.

One ``httpx.AsyncClient`` per process (HTTP/1.1, generous keep-alive pool) so connections to
upstreams are reused across requests. Its network layer is ``providers.http11_transport`` (a
lean keep-alive pool; httpcore's costs most of the gateway's CPU under load), except when
proxies are configured or ``SWITCHYARD_HTTP_TRANSPORT=httpcore``. ``build_client`` makes an
independent client with the same settings (and any transport). ``post`` is a whole request
and answer for the adapters' non-streaming calls: straight to that transport when it is ours,
through the client otherwise.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass

import httpx

from providers.http11_transport import HTTP11Transport

# Many concurrent streams to one upstream each hold a connection; keep plenty warm.
POOL_LIMITS = httpx.Limits(max_connections=4096, max_keepalive_connections=1024, keepalive_expiry=60.0)
DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=10.0)

_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")

_client: httpx.AsyncClient | None = None
_transport: HTTP11Transport | None = None  # the shared client's, when it is ours


@dataclass(slots=True)
class Answer:
    """A complete upstream answer; ``headers`` is built only when read (error answers)."""

    status_code: int
    content: bytes
    raw_headers: list[tuple[bytes, bytes]]

    @property
    def headers(self) -> dict[str, str]:
        return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in self.raw_headers}


async def post(
    client: httpx.AsyncClient | None,
    url: httpx.URL,
    headers: dict[str, str],
    content: bytes,
    phase_timeout: float,
) -> Answer:
    """POST ``content`` and read the whole answer, through ``client`` or (None) the shared pool.

    ``phase_timeout`` bounds each phase (httpx's single-number timeout). Raises
    ``httpx.HTTPError``s.
    """
    if client is None:
        client = shared_client()
        transport = _direct(url)
        if transport is not None:
            status, raw_headers, body = await transport.post(url, _raw(headers), content, phase_timeout)
            return Answer(status, body, raw_headers)
    resp = await client.post(url, content=content, headers=headers, timeout=phase_timeout)
    return Answer(resp.status_code, resp.content, resp.headers.raw)


def _direct(url: httpx.URL) -> HTTP11Transport | None:
    """The shared client's own transport, to call directly, if it is ours and ``url`` allows it."""
    # An api_base with user:password@ needs httpx's Basic auth; rare enough to take its path.
    return _transport if not url.userinfo else None


def _raw(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


class _NoCookies(httpx.Cookies):
    """A cookie store that never stores anything.

    The client is shared by every tenant: a cookie set by an upstream response must not ride
    along on other callers' requests. (It also skips http.cookiejar's per-response parsing.)
    """

    def extract_cookies(self, response: httpx.Response) -> None:
        return None

    def set_cookie_header(self, request: httpx.Request) -> None:
        return None


class StreamAnswer:
    """An upstream answer whose body is read as it arrives; ``aclose`` it when done."""

    __slots__ = ("_close", "_stream", "raw_headers", "status_code")

    def __init__(
        self,
        status_code: int,
        raw_headers: list[tuple[bytes, bytes]],
        stream: AsyncIterable[bytes],
        close: httpx.Response | httpx.AsyncByteStream,
    ) -> None:
        self.status_code = status_code
        self.raw_headers = raw_headers
        self._stream = stream
        self._close = close

    @property
    def headers(self) -> dict[str, str]:
        return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in self.raw_headers}

    def aiter_bytes(self) -> AsyncIterator[bytes]:
        return self._stream.__aiter__()

    async def aread(self) -> bytes:
        return b"".join([part async for part in self._stream])

    async def aclose(self) -> None:
        await self._close.aclose()


async def post_stream(
    client: httpx.AsyncClient | None,
    url: httpx.URL,
    headers: dict[str, str],
    content: bytes,
    pool_timeout: float,
    connect_timeout: float,
    read_timeout: float,
) -> StreamAnswer:
    """POST ``content`` and return once the answer's headers are in (``post``'s two paths).

    ``read_timeout`` bounds the wait for the headers and for each body read.
    """
    if client is None:
        client = shared_client()
        transport = _direct(url)
        if transport is not None:
            status, raw_headers, body = await transport.open_post(
                url, _raw(headers), content, pool_timeout, connect_timeout, read_timeout
            )
            return StreamAnswer(status, raw_headers, body, body)
    timeout = httpx.Timeout(pool_timeout, read=read_timeout, connect=connect_timeout)
    request = client.build_request("POST", url, content=content, headers=headers, timeout=timeout)
    resp = await client.send(request, stream=True)
    return StreamAnswer(resp.status_code, resp.headers.raw, resp.aiter_bytes(), resp)


def build_client(transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    """A new pooled client (HTTP/1.1, no redirects, no cookies); ``transport`` overrides the network."""
    client = httpx.AsyncClient(
        transport=transport,
        limits=POOL_LIMITS,
        timeout=DEFAULT_TIMEOUT,
        http1=True,
        http2=False,
        follow_redirects=False,
    )
    if hasattr(client, "_cookies"):  # httpx keeps the jar there; the public setter would copy it
        client._cookies = _NoCookies()
    return client


def default_transport() -> httpx.AsyncBaseTransport | None:
    """The lean HTTP/1.1 transport, unless proxies are configured or it is switched off.

    ``SWITCHYARD_HTTP_TRANSPORT=httpcore`` selects httpx's own transport instead (which also
    honours HTTP(S)_PROXY); ``None`` means "httpx's default".
    """
    if os.environ.get("SWITCHYARD_HTTP_TRANSPORT", "").lower() == "httpcore":
        return None
    if any(os.environ.get(name) for name in _PROXY_VARS):
        return None
    return HTTP11Transport()


def shared_client() -> httpx.AsyncClient:
    """The process-wide client, created on first use."""
    global _client, _transport
    if _client is None or _client.is_closed:
        transport = default_transport()
        _transport = transport if isinstance(transport, HTTP11Transport) else None
        _client = build_client(transport)
    return _client


async def aclose_shared_client() -> None:
    """Close the shared client (gateway shutdown); a later ``shared_client()`` makes a new one."""
    global _client, _transport
    client, _client, _transport = _client, None, None
    if client is not None:
        await client.aclose()
