"""The response cache as the chat (and embeddings) route uses it.

    plan = cache.plan(principal, body, request.headers.get("cache-control"))
    hit = await cache.lookup(plan)            # None on a miss or when the plan says skip
    if hit: answer hit.body (bytes as stored) or cache.sse(plan, hit), with cache.hit_headers(plan)
    ... call the provider ...
    cache.store(plan, response_bytes)
    # streams: rec = cache.recorder(plan); rec.feed(chunk) for each chunk; rec.finish() at the end

Lookups go LRU -> backend (Redis or in-process); stores write both, in the background.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client import Counter

from gateway.cache.backends import MemoryCacheBackend, RedisCacheBackend
from gateway.cache.keys import CacheControl, cache_key, parse_cache_control
from gateway.cache.lru import LRU, Entry
from gateway.cache.settings import CacheSettings
from gateway.cache.stream import StreamAssembler, replay_sse
from gateway.limits.errors import redis_unavailable
from gateway.pipeline import Principal
from gateway.redis_errors import RedisUnavailable

if TYPE_CHECKING:  # redis is imported only when a Redis URL is configured
    from gateway.redis_pool import RedisPool

log = logging.getLogger("switchyard.cache")

CACHE_REQUESTS = Counter("switchyard_cache_requests_total", "Response cache lookups by result.", ["result"])

HIT_HEADER = "x-switchyard-cache"
KEY_HEADER = "x-switchyard-cache-key"


@dataclass(slots=True)
class CachePlan:
    """What the cache will do for one request (``key`` None: not cacheable at all)."""

    key: str | None
    control: CacheControl
    ttl: float
    include_usage: bool = False

    @property
    def lookup(self) -> bool:
        return self.key is not None and not self.control.no_cache

    @property
    def store(self) -> bool:
        return self.key is not None and not self.control.no_store


SKIP = CachePlan(None, CacheControl(), 0.0)


@dataclass(slots=True)
class ResponseCacheService:
    settings: CacheSettings
    pool: RedisPool | None = None
    lru: LRU = field(init=False)
    backend: RedisCacheBackend | MemoryCacheBackend = field(init=False)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        s = self.settings
        if self.pool is not None:
            self.backend = RedisCacheBackend(self.pool, s.key_prefix)
            self.lru = LRU(s.local_lru_size, s.local_lru_bytes)
        else:
            # In-process only: the backend is the (bigger) store; no second LRU in front of it.
            self.backend = MemoryCacheBackend(max(s.local_lru_size, 16384), max(s.local_lru_bytes, 256 << 20))
            self.lru = LRU(0, 0)

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    def plan(
        self,
        principal: Principal,
        body: Mapping[str, Any],
        cache_control: str | None = None,
        route: str = "chat",
    ) -> CachePlan:
        """Decide once per request: the key (or not cacheable) and the caller's cache control."""
        if not self.settings.enabled:
            return SKIP
        control = parse_cache_control(body, cache_control)
        if control.no_cache and control.no_store:
            return SKIP
        # Generations at a temperature above 0 are sampled: not cached unless configured so.
        # Embeddings are deterministic whatever the body says.
        if route != "embeddings" and not self.settings.cache_nonzero_temperature:
            temp = body.get("temperature", 1.0)  # OpenAI's default temperature is 1
            if temp is None:
                temp = 1.0
            if not isinstance(temp, int | float) or temp > 0:
                return SKIP
        scope = "shared" if self.settings.shared else principal.cache_scope
        opts = body.get("stream_options")
        include_usage = bool(isinstance(opts, Mapping) and opts.get("include_usage"))
        ttl = control.ttl if control.ttl is not None else self.settings.ttl
        return CachePlan(cache_key(body, scope, route), control, ttl, include_usage)

    def peek(self, plan: CachePlan) -> Entry | None:
        """The entry when this process holds it (no I/O), else None: ``lookup`` then asks Redis.

        Lets the request path know about a hit before admission, so a hit is admitted as one
        (``Limiter.admit(instant=True)``: no tokens reserved, nothing to settle afterwards).
        """
        if not plan.lookup:
            return None
        assert plan.key is not None
        now = time.time()
        entry = self.lru.get(plan.key, now)
        if entry is None and isinstance(self.backend, MemoryCacheBackend):
            entry = self.backend.lru.get(plan.key, now)
        max_age = plan.control.max_age
        if entry is None or (max_age is not None and now - entry.created_at > max_age):
            return None  # not counted: the lookup that follows counts the outcome
        CACHE_REQUESTS.labels("hit").inc()
        return entry

    async def lookup(self, plan: CachePlan) -> Entry | None:
        """The cached entry, or None (miss, skipped, or Redis down in fail-open mode)."""
        if not plan.lookup:
            return None
        assert plan.key is not None
        now = time.time()
        entry = self.lru.get(plan.key, now)
        if entry is None:
            try:
                entry = await self.backend.get_entry(plan.key)
            except RedisUnavailable:
                assert self.pool is not None
                if self.pool.failure_mode == "closed":
                    raise redis_unavailable() from None
                CACHE_REQUESTS.labels("unavailable").inc()
                return None
            if entry is not None:
                self.lru.put(plan.key, entry)
        max_age = plan.control.max_age
        if entry is not None and max_age is not None and now - entry.created_at > max_age:
            entry = None
        CACHE_REQUESTS.labels("hit" if entry is not None else "miss").inc()
        return entry

    def hit_headers(self, plan: CachePlan) -> dict[str, str]:
        return {HIT_HEADER: "hit", KEY_HEADER: plan.key or ""}

    def sse(self, plan: CachePlan, entry: Entry) -> bytes:
        """The entry replayed as a complete SSE body (memoised on the entry)."""
        if plan.include_usage:
            return replay_sse(entry.body, include_usage=True)
        if entry.sse is None:
            entry.sse = replay_sse(entry.body)
        return entry.sse

    def store(self, plan: CachePlan, body: bytes) -> None:
        """Keep a successful non-streamed response body (in the background; never raises)."""
        if not plan.store or len(body) > self.settings.max_entry_bytes:
            return
        assert plan.key is not None
        now = time.time()
        entry = Entry(body, now, now + plan.ttl)
        self.lru.put(plan.key, entry)
        if isinstance(self.backend, RedisCacheBackend):
            self.backend.set_entry_nowait(plan.key, entry)  # auto-pipelined, nothing waits for it
            return
        task = asyncio.get_running_loop().create_task(self._write(plan.key, entry))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self, key: str, entry: Entry) -> None:
        try:
            await self.backend.set_entry(key, entry)
        except RedisUnavailable:
            pass
        except Exception:
            log.exception("cache store failed")

    def recorder(self, plan: CachePlan) -> StreamRecorder | None:
        """A recorder for a streamed response, or None when it will not be stored."""
        return StreamRecorder(self, plan) if plan.store else None

    async def drain(self) -> None:
        """Wait for background stores (tests, graceful shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self.pool is not None:
            await self.pool.barrier()

    async def close(self) -> None:
        await self.drain()


class StreamRecorder:
    """Collects a stream's chunks; ``finish()`` stores the assembled completion if it ended cleanly."""

    __slots__ = ("_asm", "_cache", "_plan")

    def __init__(self, cache: ResponseCacheService, plan: CachePlan) -> None:
        self._cache = cache
        self._plan = plan
        self._asm = StreamAssembler()

    def feed(self, chunk: dict[str, Any]) -> None:
        self._asm.feed(chunk)

    def feed_sse(self, event: bytes) -> None:
        """Feed raw SSE bytes (one or more ``data: {...}`` events, as the provider sent them)."""
        for line in event.split(b"\n"):
            if line.startswith(b"data:"):
                data = line[5:].strip()
                if data and data != b"[DONE]":
                    try:
                        self._asm.feed(orjson.loads(data))
                    except orjson.JSONDecodeError:
                        self._asm.broken = True

    def finish(self) -> None:
        if self._asm.complete:
            self._cache.store(self._plan, self._asm.completion_bytes())


def build_cache(settings: CacheSettings, pool: RedisPool | None) -> ResponseCacheService:
    return ResponseCacheService(settings, pool)
