"""A lean HTTP/1.1 keep-alive transport for httpx, for the gateway's upstream calls.

Why not httpcore (httpx's default)? Profiles of the gateway under load showed most of its CPU in
httpcore's connection pool: on every request it scans every pooled connection and polls each
socket (a syscall per idle connection per request), on top of anyio and h11 layers. This
transport keeps httpx's API (the adapters still use one ``httpx.AsyncClient``) and replaces the
network layer with asyncio protocols, the ``httptools`` C parser (already used by uvicorn) and
a LIFO idle-connection list per origin: acquiring a connection is a list pop.

Scope: HTTP/1.1 over TCP or TLS, one request per connection at a time (no pipelining), request
bodies buffered (the gateway sends small JSON bodies). Proxies are not supported here;
``providers.http`` falls back to httpcore when proxy environment variables are set.
Timeouts follow httpx's ``Timeout``: ``connect`` for new connections, ``read`` for the headers
and for each wait on the body.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import httptools
import httpx

_HIGH_WATER = 1 << 20  # pause reading from the upstream above this much unread body
_LOW_WATER = 1 << 18
_IDLE_EXPIRY_S = 60.0
_MAX_IDLE_PER_ORIGIN = 1024
_CONNECT_TIMEOUT_S = 10.0  # providers.http.DEFAULT_TIMEOUT's connect, for ``post``
_MAX_TARGETS = 4096

Origin = tuple[bytes, str, int]


class _Connection(asyncio.Protocol):
    """One upstream connection and the state of the response being read on it."""

    __slots__ = (
        "body",
        "buffered",
        "closed",
        "complete",
        "error",
        "headers",
        "headers_done",
        "idle_since",
        "keep_alive",
        "loop",
        "parser",
        "paused",
        "received",
        "status",
        "transport",
        "waiter",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.waiter: asyncio.Future[None] | None = None
        self._reset()

    def _reset(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.complete = False
        self.keep_alive = True
        self.body: deque[bytes] = deque()
        self.buffered = 0
        self.paused = False
        self.error: Exception | None = None
        self.received = False

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"invalid HTTP response from upstream: {exc}"))
            if self.transport is not None:
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.headers_done and not self.complete and not self._has_length():
            # A body delimited by the connection closing.
            self.complete = True
            self.keep_alive = False
            self._wake()
        elif not self.complete:
            message = "upstream closed the connection" + ("" if self.received else " without a response")
            self._fail(httpx.RemoteProtocolError(message) if exc is None else httpx.ReadError(str(exc)))

    # -- httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        self.headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.body.append(bytes(body))
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep_alive = self.keep_alive and self.parser.should_keep_alive()
        self._wake()

    # -- helpers

    def _has_length(self) -> bool:
        for name, value in self.headers:
            lower = name.lower()
            if lower == b"content-length" or (lower == b"transfer-encoding" and b"chunked" in value.lower()):
                return True
        return False

    def _fail(self, exc: Exception) -> None:
        if self.error is None:
            self.error = exc
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, read_timeout: float | None) -> None:
        """Wait for the next parser event (headers, body, completion, error)."""
        waiter = self.loop.create_future()
        self.waiter = waiter
        timer = None
        if read_timeout is not None:
            # A timer handle, not asyncio.timeout(): no extra task or context per wait.
            timer = self.loop.call_later(read_timeout, _expire, waiter)
        try:
            await waiter
        finally:
            self.waiter = None
            if timer is not None:
                timer.cancel()

    def take_body(self) -> bytes:
        chunk = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        self.body.clear()
        self.buffered = 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return chunk

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(httpx.ReadTimeout("upstream read timed out"))


class _ResponseStream(httpx.AsyncByteStream):
    """The body of one response; returns the connection to the pool once fully read."""

    def __init__(self, pool: HTTP11Transport, origin: Origin, conn: _Connection, read_timeout: float | None):
        self._pool = pool
        self._origin = origin
        self._conn = conn
        self._timeout = read_timeout
        self._released = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn = self._conn
        while True:
            if conn.body:
                yield conn.take_body()
                continue
            if conn.complete:
                return
            if conn.error is not None:
                raise conn.error
            await conn.wait(self._timeout)

    async def aclose(self) -> None:
        if self._released:
            return
        self._released = True
        self._pool._slots.release()
        conn = self._conn
        if conn.complete and conn.keep_alive and not conn.closed and not conn.body:
            self._pool._release(self._origin, conn)
        else:
            # Not read to the end (e.g. the client went away mid-stream): dropping the
            # connection is what tells the upstream to stop.
            conn.close()


class _Slots:
    """A counting semaphore whose uncontended take is one compare.

    ``asyncio.Semaphore.locked()`` and ``acquire()`` scan their waiters with a generator on
    every call: a visible line in the gateway's profile at concurrency 16.
    """

    __slots__ = ("_free", "_waiters")

    def __init__(self, count: int) -> None:
        self._free = count
        self._waiters: deque[asyncio.Future[None]] = deque()

    def take(self) -> bool:
        """Take a slot if one is free and nobody is queued for one."""
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return True
        return False

    async def wait(self) -> None:
        """Queue for a slot (after ``take`` failed); the slot is ours when this returns."""
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.release()  # handed a slot as we were cancelled: pass it on
            elif fut in self._waiters:  # (a release may already have dropped it)
                self._waiters.remove(fut)
            raise

    def release(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the slot passes straight to the next waiter
                return
        self._free += 1


class HTTP11Transport(httpx.AsyncBaseTransport):
    """An ``httpx`` transport: pooled HTTP/1.1 keep-alive connections, httptools parsing."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None, max_connections: int = 4096) -> None:
        self._idle: dict[Origin, list[_Connection]] = {}
        self._ssl = ssl_context
        self._closed = False
        # Requests in flight (= connections in use). Over the cap, callers wait up to httpx's
        # pool timeout, as with httpcore, instead of opening sockets until descriptors run out.
        self._slots = _Slots(max_connections)
        # Per URL object: its origin and request head. Adapters keep one URL per api_base, and
        # reading ``netloc``/``host`` off an httpx URL costs more per request than the rest of
        # building the request (py-spy, concurrency 1). Keyed by id, with the URL held so the id
        # cannot be reused while it is here.
        self._targets: dict[int, tuple[httpx.URL, Origin, bytes]] = {}

    def _target(self, url: httpx.URL) -> tuple[Origin, bytes]:
        hit = self._targets.get(id(url))
        if hit is not None and hit[0] is url:
            return hit[1], hit[2]
        origin = _origin(url)
        head = b"".join([b"POST ", url.raw_path, b" HTTP/1.1\r\nHost: ", url.netloc, b"\r\n"])
        if len(self._targets) >= _MAX_TARGETS:
            self._targets.clear()  # URLs built per request (rare): start over rather than grow
        self._targets[id(url)] = (url, origin, head)
        return origin, head

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = httpx.create_ssl_context()
            self._ssl.set_alpn_protocols(["http/1.1"])
        return self._ssl

    def _acquire(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if conn.closed or conn.transport is None or conn.transport.is_closing():
                continue
            if now - conn.idle_since > _IDLE_EXPIRY_S:
                conn.close()
                continue
            return conn
        return None

    def _release(self, origin: Origin, conn: _Connection) -> None:
        if self._closed:
            conn.close()
            return
        idle = self._idle.setdefault(origin, [])
        if len(idle) >= _MAX_IDLE_PER_ORIGIN:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)

    async def _connect(self, origin: Origin, connect_timeout: float | None) -> _Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        ctx = self._ssl_context() if scheme == b"https" else None
        try:
            coro = loop.create_connection(
                lambda: _Connection(loop), host, port, ssl=ctx, server_hostname=host if ctx else None
            )
            _, conn = await asyncio.wait_for(coro, connect_timeout)
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"connecting to {host}:{port} timed out") from exc
        except OSError as exc:
            raise httpx.ConnectError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from exc
        return conn

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        origin = _origin(url)
        timeouts: dict[str, Any] = request.extensions.get("timeout", {})
        try:
            body = request.content
        except httpx.RequestNotRead:
            body = b"".join([part async for part in request.stream])  # type: ignore[union-attr]
        payload = _serialize(request, body)
        read_timeout = timeouts.get("read")
        conn = await self._open(origin, payload, timeouts.get("pool"), timeouts.get("connect"), read_timeout)
        return httpx.Response(
            conn.status,
            headers=conn.headers,
            stream=_ResponseStream(self, origin, conn, read_timeout),
            extensions={"http_version": b"HTTP/1.1"},
            request=request,
        )

    async def post(
        self, url: httpx.URL, headers: list[tuple[bytes, bytes]], body: bytes, phase_timeout: float
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """A whole POST and its whole answer: (status, headers, body), no httpx objects.

        The adapters' non-streaming calls: building httpx's ``Request`` and ``Response`` (and
        its client's header merging, auth and redirect layers) cost more CPU per call than this
        transport's own work, measured with py-spy at concurrency 16. ``phase_timeout`` bounds
        the wait for a pool slot and each read, as httpx's single-number timeout does; a new
        connection gets at most ``_CONNECT_TIMEOUT_S``. Raises httpx's exceptions, as
        ``handle_async_request`` does.
        """
        origin, head = self._target(url)
        connect = min(phase_timeout, _CONNECT_TIMEOUT_S)
        conn = await self._open(
            origin, _post_payload(head, headers, body), phase_timeout, connect, phase_timeout
        )
        parts: list[bytes] = []
        try:
            while True:
                if conn.body:
                    parts.append(conn.take_body())  # as it comes: reading pauses above _HIGH_WATER
                if conn.complete:
                    break
                if conn.error is not None:
                    raise conn.error
                await conn.wait(phase_timeout)
        except BaseException:
            self._slots.release()
            conn.close()
            raise
        self._slots.release()
        if conn.keep_alive and not conn.closed:
            self._release(origin, conn)
        else:
            conn.close()
        return conn.status, conn.headers, parts[0] if len(parts) == 1 else b"".join(parts)

    async def open_post(
        self,
        url: httpx.URL,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        pool_timeout: float,
        connect_timeout: float,
        read_timeout: float,
    ) -> tuple[int, list[tuple[bytes, bytes]], _ResponseStream]:
        """A POST whose answer is read as it comes (streams): (status, headers, body stream).

        ``post``'s reasons, for streams; the body stream must be closed (``aclose``), which
        returns the connection to the pool, or drops it if the body was not read to the end.
        """
        origin, head = self._target(url)
        conn = await self._open(
            origin, _post_payload(head, headers, body), read_timeout, connect_timeout, read_timeout
        )
        return conn.status, conn.headers, _ResponseStream(self, origin, conn, read_timeout)

    async def _open(
        self,
        origin: Origin,
        payload: bytes,
        pool_timeout: float | None,
        connect_timeout: float | None,
        read_timeout: float | None,
    ) -> _Connection:
        """Send ``payload`` on a pooled (or new) connection and wait for the answer's headers.

        Holds one of ``_slots`` on success: whoever reads the body releases it.
        """
        if not self._slots.take():
            try:
                await asyncio.wait_for(self._slots.wait(), pool_timeout)
            except TimeoutError:
                raise httpx.PoolTimeout("no upstream connection slot free in time") from None
        try:
            reused_conn = self._acquire(origin)
            conn = reused_conn or await self._connect(origin, connect_timeout)
            try:
                await self._exchange(conn, payload, read_timeout)
            except (httpx.RemoteProtocolError, httpx.NetworkError):
                if reused_conn is None or conn.received:
                    raise
                # Keep-alive race: the upstream closed the idle connection as we reused it. Our
                # request then meets a closed socket: a FIN (RemoteProtocolError) or, when it
                # arrives after the close, a RST (ReadError from connection_lost). Either way no
                # byte of a response came back, so the upstream did not process it: retry once
                # on a fresh connection (as browsers do; the router would retry the 502 anyway,
                # at the cost of a cooldown failure). Never on a fresh connection (the upstream
                # refused this request), after response bytes (it may have been processed), or
                # on a timeout (it may still be running).
                conn = await self._connect(origin, connect_timeout)
                await self._exchange(conn, payload, read_timeout)
            return conn
        except BaseException:
            self._slots.release()
            raise

    @staticmethod
    async def _exchange(conn: _Connection, payload: bytes, read_timeout: float | None) -> None:
        conn._reset()
        try:
            assert conn.transport is not None
            conn.transport.write(payload)
            while not conn.headers_done:
                if conn.error is not None:
                    raise conn.error
                await conn.wait(read_timeout)
        except BaseException:
            conn.close()
            raise

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


def _origin(url: httpx.URL) -> Origin:
    scheme = url.raw_scheme
    if scheme not in (b"http", b"https"):
        raise httpx.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}")
    return (scheme, url.host, url.port or (443 if scheme == b"https" else 80))


def _post_payload(head: bytes, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    lines = [head]
    for name, value in headers:
        lines += [name, b": ", value, b"\r\n"]
    lines += [b"Content-Length: ", str(len(body)).encode(), b"\r\n\r\n", body]
    return b"".join(lines)


def _serialize(request: httpx.Request, body: bytes) -> bytes:
    target = request.url.raw_path
    lines = [request.method.encode("ascii"), b" ", target, b" HTTP/1.1\r\n"]
    has_length = False
    for name, value in request.headers.raw:
        lower = name.lower()
        if lower == b"transfer-encoding":
            continue  # the body is buffered and sent with a Content-Length
        if lower == b"content-length":
            has_length = True
        lines += [name, b": ", value, b"\r\n"]
    if not has_length and (body or request.method in ("POST", "PUT", "PATCH")):
        lines += [b"Content-Length: ", str(len(body)).encode(), b"\r\n"]
    lines.append(b"\r\n")
    lines.append(body)
    return b"".join(lines)
