"""The gateway's one Redis connection pool, with short timeouts and a circuit breaker.

Every shared-state feature (rate limits, the response cache, the router's shared cooldowns)
goes through ``RedisPool.call``: a Redis outage then costs a request at most one short
timeout, after which the circuit opens and callers skip Redis at once until a re-probe
succeeds. Whether "skip" means "serve without shared state" (fail-open) or "answer 503"
(fail-closed) is each caller's decision, driven by ``failure_mode``.

The hot path (limits, cache) uses ``execute``/``evalsha``: commands from every concurrent
request queued during one event-loop turn are written together on one dedicated connection
("auto-pipelining", see ``gateway.redis_wire``), so under load a round trip carries many
requests' commands. ``call`` gives full redis-py access for everything else.

Keys are laid out for Redis Cluster: everything one Lua script touches shares a hash tag,
e.g. ``sy:{key:ab12}:w`` and ``sy:{key:ab12}:p`` land in the same slot.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import redis.asyncio as aioredis
from prometheus_client import Counter, Gauge
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, ResponseError

from gateway.metrics import REDIS_ROUNDTRIP
from gateway.redis_errors import RedisUnavailable
from gateway.redis_wire import WireConnection

log = logging.getLogger("switchyard.redis")

T = TypeVar("T")
# What callers do while Redis is down: serve without shared state ("open"), answer 503
# ("closed"), or, for rate limits, enforce limit / live instances in-process ("divide"; every
# other component treats it as "open").
FailureMode = Literal["open", "closed", "divide"]

REDIS_ERRORS = Counter(
    "switchyard_redis_errors_total",
    "Redis calls that failed or timed out, by the component that made them.",
    ["component"],
)
REDIS_SKIPPED = Counter(
    "switchyard_redis_skipped_total",
    "Redis calls not attempted because the circuit was open, by component.",
    ["component"],
)
REDIS_UP = Gauge("switchyard_redis_up", "1 while the Redis circuit is closed (Redis reachable), else 0.")
_POOL_ROUNDTRIP = REDIS_ROUNDTRIP.labels("pool")


@dataclass(slots=True)
class Circuit:
    """Closed -> open on a failure; while open, one probe call is let through every ``retry_interval``.

    A single failure opens it: with ~100 ms timeouts a flapping Redis would otherwise add a
    timeout to many requests before we notice. A successful probe closes it again.
    """

    retry_interval: float = 1.0
    log_interval: float = 10.0
    open_until: float = 0.0
    is_open: bool = False
    _last_log: float = field(default=-1e9)

    def allow(self) -> bool:
        if not self.is_open:
            return True
        now = time.monotonic()
        if now >= self.open_until:
            # Half-open: this caller probes; others keep skipping until it reports back.
            self.open_until = now + self.retry_interval
            return True
        return False

    def success(self) -> None:
        if self.is_open:
            self.is_open = False
            REDIS_UP.set(1)
            log.warning("redis reachable again; shared limits and cache resumed")

    def failure(self, component: str, exc: BaseException) -> None:
        REDIS_ERRORS.labels(component).inc()
        now = time.monotonic()
        if not self.is_open:
            self.is_open = True
            REDIS_UP.set(0)
        self.open_until = now + self.retry_interval
        # Log at most once per interval: an outage must not flood the log at request rate.
        if now - self._last_log >= self.log_interval:
            self._last_log = now
            log.error("redis unavailable (%s: %s); component=%s", type(exc).__name__, exc, component)


@dataclass(frozen=True, slots=True)
class LuaScript:
    """A Lua script run by SHA (``EVALSHA``), loaded into Redis only when Redis says NOSCRIPT."""

    text: bytes
    sha: str

    @classmethod
    def from_text(cls, text: str | bytes) -> LuaScript:
        raw = text.encode() if isinstance(text, str) else text
        return cls(raw, hashlib.sha1(raw).hexdigest())

    @classmethod
    def from_file(cls, path: str | Path) -> LuaScript:
        return cls.from_text(Path(path).read_bytes())


def _consume(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()  # retrieved: a fire-and-forget failure is not logged as "never retrieved"


class RedisPool:
    """A ``redis.asyncio`` client over one connection pool, plus the shared circuit breaker."""

    def __init__(
        self,
        url: str,
        *,
        socket_timeout: float = 0.1,
        connect_timeout: float = 0.1,
        max_connections: int = 256,
        failure_mode: FailureMode = "open",
        retry_interval: float = 1.0,
        key_prefix: str = "sy",
    ) -> None:
        self.url = url
        self.failure_mode: FailureMode = failure_mode
        self.key_prefix = key_prefix
        # The op timeout bounds a whole call (pool wait + write + read), a little above the socket one.
        self.op_timeout = max(socket_timeout, connect_timeout) * 2
        self.circuit = Circuit(retry_interval=retry_interval)
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
            max_connections=max_connections,
            # No retries: a retry multiplies the time a request waits on a dead Redis.
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
            health_check_interval=0,
        )
        self._background: set[asyncio.Task[None]] = set()
        self._mux = WireConnection(url, connect_timeout)
        REDIS_UP.set(1)

    async def execute(self, component: str, *args: Any) -> Any:
        """One command through the auto-pipeline; ``RedisUnavailable`` when Redis cannot answer.

        Command errors (``ResponseError``) are raised as they are: they are bugs, not outages.
        """
        if not self.circuit.allow():
            REDIS_SKIPPED.labels(component).inc()
            raise RedisUnavailable("redis circuit open")
        fut = self._mux.submit(args)
        # A timer on the reply's future, not asyncio.timeout(): no Timeout object, context
        # manager or task bookkeeping per command (the full path makes three or four of these).
        timer = fut.get_loop().call_later(self.op_timeout, _time_out, fut)
        try:
            reply = await fut
        except TimeoutError as exc:
            self._mux.reset()  # the server may be gone without closing the socket
            self.circuit.failure(component, exc)
            raise RedisUnavailable("redis timed out") from exc
        except (aioredis.RedisError, OSError) as exc:
            self.circuit.failure(component, exc)
            raise RedisUnavailable(str(exc)) from exc
        finally:
            timer.cancel()
        self.circuit.success()
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    def execute_nowait(self, component: str, *args: Any) -> None:
        """Fire-and-forget: queue a command, never wait for (or fail on) its reply."""
        if self.circuit.is_open:  # fire-and-forget calls never probe: an awaited call does
            REDIS_SKIPPED.labels(component).inc()
            return
        self._mux.submit(args).add_done_callback(_consume)

    def evalsha_nowait(
        self, component: str, script: LuaScript, keys: Sequence[str], args: Sequence[Any]
    ) -> None:
        """Fire-and-forget ``evalsha``; the rare NOSCRIPT reply loads the script and retries in a task."""
        if self.circuit.is_open:  # fire-and-forget calls never probe: an awaited call does
            REDIS_SKIPPED.labels(component).inc()
            return

        def done(fut: asyncio.Future[Any]) -> None:
            if fut.cancelled():
                return
            if fut.exception() is None and isinstance(fut.result(), NoScriptError):
                task = asyncio.get_running_loop().create_task(
                    self._evalsha_quietly(component, script, keys, args)
                )
                self._background.add(task)
                task.add_done_callback(self._background.discard)

        self._mux.submit(("EVALSHA", script.sha, len(keys), *keys, *args)).add_done_callback(done)

    async def _evalsha_quietly(
        self, component: str, script: LuaScript, keys: Sequence[str], args: Sequence[Any]
    ) -> None:
        try:
            await self.evalsha(component, script, keys, args)
        except Exception:
            log.debug("fire-and-forget script failed", exc_info=True)

    async def evalsha(
        self, component: str, script: LuaScript, keys: Sequence[str], args: Sequence[Any]
    ) -> Any:
        """Run ``script`` (``EVALSHA``; on NOSCRIPT load it and run it again: it did not run)."""
        try:
            return await self.execute(component, "EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            await self.execute(component, "SCRIPT", "LOAD", script.text)
            return await self.execute(component, "EVALSHA", script.sha, len(keys), *keys, *args)

    async def call(self, component: str, fn: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
        """Run ``fn(client)`` under the circuit and the op timeout; raise ``RedisUnavailable`` on failure."""
        if not self.circuit.allow():
            REDIS_SKIPPED.labels(component).inc()
            raise RedisUnavailable("redis circuit open")
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.op_timeout):
                result = await fn(self.client)
        except (aioredis.RedisError, OSError, TimeoutError) as exc:
            _POOL_ROUNDTRIP.observe(time.monotonic() - started)
            if isinstance(exc, aioredis.ResponseError) and not isinstance(exc, aioredis.BusyLoadingError):
                # A command error (bad script, wrong type) is a bug, not an outage.
                raise
            self.circuit.failure(component, exc)
            raise RedisUnavailable(str(exc)) from exc
        _POOL_ROUNDTRIP.observe(time.monotonic() - started)
        self.circuit.success()
        return result

    async def barrier(self) -> None:
        """Wait until every command queued so far (fire-and-forget ones included) has run."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)
        try:
            await self.execute("barrier", "PING")
        except RedisUnavailable:
            pass

    async def load_scripts(self, component: str, *scripts: LuaScript) -> None:
        """Load scripts ahead of use, so fire-and-forget calls do not meet NOSCRIPT."""
        for script in scripts:
            await self.execute(component, "SCRIPT", "LOAD", script.text)

    @property
    def available(self) -> bool:
        """False while the circuit is open (callers may skip optional work)."""
        return not self.circuit.is_open or time.monotonic() >= self.circuit.open_until

    async def ping(self) -> bool:
        try:
            return bool(await self.call("ping", lambda c: c.ping()))
        except RedisUnavailable:
            return False

    async def close(self) -> None:
        await self._mux.close()
        await self.client.aclose()


_pools: dict[tuple[str, str], RedisPool] = {}


def get_pool(url: str, *, failure_mode: FailureMode = "open", **kwargs: object) -> RedisPool:
    """The process-wide pool for ``url`` (created on first use), so every component shares one."""
    key = (url, failure_mode)
    pool = _pools.get(key)
    if pool is None:
        pool = RedisPool(url, failure_mode=failure_mode, **kwargs)  # type: ignore[arg-type]
        _pools[key] = pool
    return pool


async def close_pools() -> None:
    """Close every pool made by ``get_pool`` (gateway shutdown)."""
    pools = list(_pools.values())
    _pools.clear()
    for pool in pools:
        await pool.close()


def _time_out(fut: asyncio.Future[Any]) -> None:
    if not fut.done():  # the mux drops the reply if it comes later
        fut.set_exception(TimeoutError("redis command timed out"))
