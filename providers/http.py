"""The process-wide pooled HTTP client every HTTP provider adapter shares.

One ``httpx.AsyncClient`` per process (HTTP/1.1, generous keep-alive pool) so connections to
upstreams are reused across requests. Its network layer is ``providers.http11_transport`` (a
lean keep-alive pool; httpcore's costs most of the gateway's CPU under load), except when
proxies are configured or ``SWITCHYARD_HTTP_TRANSPORT=httpcore``. ``build_client`` makes an
independent client with the same settings (and any transport).
"""

from __future__ import annotations

import os

import httpx

# Many concurrent streams to one upstream each hold a connection; keep plenty warm.
POOL_LIMITS = httpx.Limits(max_connections=4096, max_keepalive_connections=1024, keepalive_expiry=60.0)
DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=10.0)

_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")

_client: httpx.AsyncClient | None = None


class _NoCookies(httpx.Cookies):
    """A cookie store that never stores anything.

    The client is shared by every tenant: a cookie set by an upstream response must not ride
    along on other callers' requests. (It also skips http.cookiejar's per-response parsing.)
    """

    def extract_cookies(self, response: httpx.Response) -> None:
        return None

    def set_cookie_header(self, request: httpx.Request) -> None:
        return None


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
    from providers.http11_transport import HTTP11Transport

    return HTTP11Transport()


def shared_client() -> httpx.AsyncClient:
    """The process-wide client, created on first use."""
    global _client
    if _client is None or _client.is_closed:
        _client = build_client(default_transport())
    return _client


async def aclose_shared_client() -> None:
    """Close the shared client (gateway shutdown); a later ``shared_client()`` makes a new one."""
    global _client
    client, _client = _client, None
    if client is not None:
        await client.aclose()
