"""A minimal pipelined RESP2 connection for the hot path (limits, cache).

Why not redis-py for these calls: per command it checks a connection out of the pool (a lock
and bookkeeping), packs through several layers and reads the reply with a pure-Python parser
driven by a coroutine; that is ~80 µs of CPU per round trip here, more than the rest of an
admission. This protocol writes every command queued during one event-loop turn in a single
``transport.write`` and parses replies in ``data_received``, resolving futures in FIFO order:
no task, no lock, no checkout per command, and concurrent requests share round trips
("auto-pipelining"). It speaks only what those calls need (commands with bytes/str/int
arguments; replies: simple, error, integer, bulk, array). Everything else uses redis-py.

Measured against redis-py 8.1's asyncio client with hiredis 3.5 (its C reply parser), one pool,
``execute_command`` under the same timeout and circuit breaker (2 shared CPU cores, local Redis,
bench/limits_cache.py, same runs; CPU µs per request of the benchmark process):

====================================================  ==========  ==================
                                                      this module  redis-py+hiredis
limiter admit+settle, 4 scopes, sequential            111-132      302-323
limiter admit+settle, 16 concurrent                   77-80        282-289
cache plan + lookup miss (one GET)                    56-60        119-143
plain GET alone (redis-py, no gateway code)           --           92 (50 on a checked-out
                                                                    connection: the rest is
                                                                    pool checkout/bookkeeping)
gateway req/s per core, limits+cache on, misses       896-1042     714-726
  same, as a ratio to limits+cache off (same run)     0.70-0.74    0.55-0.63
====================================================  ==========  ==================

redis-py costs the gateway 20-30% of its throughput with limits and cache on, so the hot path
keeps this client; redis-py serves everything else through ``RedisPool.call``.
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

from gateway.metrics import REDIS_ROUNDTRIP

_ROUNDTRIP = REDIS_ROUNDTRIP.labels("pipelined")


def encode_command(args: Sequence[Any]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        t = type(a)
        if t is bytes:
            b = a
        elif t is str:
            b = a.encode()
        elif t is int or t is float:
            b = repr(a).encode()
        else:
            raise TypeError(f"unsupported redis argument type {t.__name__}")
        parts.append(b"$%d\r\n%b\r\n" % (len(b), b))
    return b"".join(parts)


class _Incomplete(Exception):
    pass


def _error(msg: bytes) -> ResponseError:
    text = msg.decode(errors="replace")
    if text.startswith("NOSCRIPT"):
        return NoScriptError(text)
    return ResponseError(text)


def parse_reply(buf: bytes | bytearray, pos: int) -> tuple[Any, int]:
    """One reply starting at ``pos``: ``(value, next pos)``; raises ``_Incomplete`` if cut short."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    kind = buf[pos]
    line = buf[pos + 1 : end]
    nxt = end + 2
    if kind == 58:  # ':'
        return int(line), nxt
    if kind == 36:  # '$'
        n = int(line)
        if n < 0:
            return None, nxt
        if len(buf) < nxt + n + 2:
            raise _Incomplete
        return bytes(buf[nxt : nxt + n]), nxt + n + 2
    if kind == 43:  # '+'
        return bytes(line), nxt
    if kind == 45:  # '-'
        return _error(bytes(line)), nxt
    if kind == 42:  # '*'
        n = int(line)
        if n < 0:
            return None, nxt
        items = []
        for _ in range(n):
            item, nxt = parse_reply(buf, nxt)
            items.append(item)
        return items, nxt
    raise RedisConnectionError(f"unexpected RESP type byte {kind!r}")


class RespProtocol(asyncio.Protocol):
    """Replies resolve the oldest pending future; a lost connection fails every pending one."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.pending: deque[asyncio.Future[Any]] = deque()
        self.buf = bytearray()
        self.closed = False
        # Round trips timed: (commands sent once it was written, when). Its last reply ends it.
        self.sent = 0
        self.replied = 0
        self.round_trips: deque[tuple[int, float]] = deque()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses, so no isinstance check.)
        self.transport = transport  # type: ignore[assignment]

    def send(self, futures: Sequence[asyncio.Future[Any]], data: bytes) -> None:
        """Write commands whose replies resolve ``futures`` (one round trip, timed)."""
        assert self.transport is not None
        self.pending.extend(futures)
        self.sent += len(futures)
        self.round_trips.append((self.sent, time.monotonic()))
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos = 0
        pending = self.pending
        replied = self.replied
        try:
            while pos < len(buf) and pending:
                value, pos = parse_reply(buf, pos)
                replied += 1
                fut = pending.popleft()
                if not fut.done():  # a caller that timed out or was cancelled: drop its reply
                    fut.set_result(value)
        except _Incomplete:
            pass
        except Exception as exc:  # a protocol error: the stream cannot be trusted any more
            self._fail(RedisConnectionError(f"redis protocol error: {exc}"))
            if self.transport is not None:
                self.transport.abort()
            return
        finally:
            self.replied = replied
        round_trips = self.round_trips
        if round_trips and round_trips[0][0] <= replied:
            now = time.monotonic()
            while round_trips and round_trips[0][0] <= replied:
                _ROUNDTRIP.observe(now - round_trips.popleft()[1])
        if pos:
            del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(RedisConnectionError(f"connection to redis lost: {exc or 'closed by server'}"))

    def _fail(self, exc: Exception) -> None:
        self.round_trips.clear()
        while self.pending:
            fut = self.pending.popleft()
            if not fut.done():
                fut.set_exception(exc)


class WireConnection:
    """One lazily (re)connected pipelined connection to the Redis at ``url``."""

    def __init__(self, url: str, connect_timeout: float) -> None:
        self.params = parse_url(url)
        self.connect_timeout = connect_timeout
        self._proto: RespProtocol | None = None
        self._connecting: asyncio.Future[None] | None = None
        self._queue: list[tuple[bytes, asyncio.Future[Any]]] = []
        self._scheduled = False

    def submit(self, args: Sequence[Any]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._queue.append((encode_command(args), fut))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        self._scheduled = False
        proto = self._proto
        if proto is None or proto.closed or proto.transport is None:
            if self._connecting is None:
                self._connecting = asyncio.ensure_future(self._connect())
            return  # _connect flushes when it is done
        batch, self._queue = self._queue, []
        if not batch:
            return
        proto.send([f for _, f in batch], b"".join(c for c, _ in batch))

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        p = self.params
        try:
            async with asyncio.timeout(self.connect_timeout):
                cls = p.get("connection_class")
                if cls is UnixDomainSocketConnection:
                    _, proto = await loop.create_unix_connection(RespProtocol, p["path"])
                else:
                    ssl_ctx = ssl_module.create_default_context() if cls is SSLConnection else None
                    _, proto = await loop.create_connection(
                        RespProtocol, p.get("host", "localhost"), int(p.get("port", 6379)), ssl=ssl_ctx
                    )
                setup: list[Sequence[Any]] = []
                if p.get("password"):
                    auth = (
                        ("AUTH", p["username"], p["password"])
                        if p.get("username")
                        else ("AUTH", p["password"])
                    )
                    setup.append(auth)
                if int(p.get("db") or 0):
                    setup.append(("SELECT", int(p["db"])))
                if setup:
                    futs = [loop.create_future() for _ in setup]
                    proto.send(futs, b"".join(encode_command(c) for c in setup))
                    for f in futs:
                        reply = await f
                        if isinstance(reply, ResponseError):
                            raise RedisConnectionError(f"redis setup failed: {reply}")
            self._proto = proto
        except (Exception, asyncio.CancelledError) as exc:
            batch, self._queue = self._queue, []
            err = exc if isinstance(exc, Exception) else RedisConnectionError("connect cancelled")
            if isinstance(err, TimeoutError):
                err = RedisConnectionError("timed out connecting to redis")
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(err)
            return
        finally:
            self._connecting = None
        self._flush()

    def reset(self) -> None:
        """Drop the connection (after a timeout: the server may be gone without a FIN)."""
        proto, self._proto = self._proto, None
        if proto is not None and proto.transport is not None:
            proto.transport.abort()

    async def close(self) -> None:
        self.reset()
        if self._connecting is not None:
            self._connecting.cancel()
