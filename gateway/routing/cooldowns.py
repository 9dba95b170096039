"""Cooldowns: take a deployment out of rotation after repeated failures.

A deployment that fails ``allowed_fails`` times within ``allowed_fails_window_s`` is cooled
down for ``cooldown_time`` seconds; a 429 carrying ``Retry-After`` cools it down for that long
at once. Deadlines live on ``DeploymentState.cooldown_until`` so the pick reads a float.

With Redis configured, failures are counted and deadlines published there (a sorted set of
``deployment id -> deadline`` that prunes itself, plus a per-failure-counter key with a TTL),
so every gateway instance stops sending to a failing deployment. Reads go through a short
local cache: the hot path refreshes from Redis at most once per ``refresh_interval_s``, and
any Redis trouble falls back to local-only state (fail open: routing must not stop because
Redis did).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from gateway.routing.state import DeploymentState

T = TypeVar("T")

log = logging.getLogger("switchyard.routing.cooldowns")

# Upper bound for a cooldown taken from an upstream's Retry-After, so a silly header cannot
# take a deployment out for hours.
MAX_RETRY_AFTER_COOLDOWN_S = 300.0


@dataclass(slots=True, frozen=True)
class CooldownSettings:
    """``allowed_fails`` failures within the window start a cooldown (0 behaves like 1: the
    first failure does)."""

    allowed_fails: int = 3
    allowed_fails_window_s: float = 60.0
    cooldown_time: float = 30.0
    refresh_interval_s: float = 0.2


class CooldownManager:
    """Counts failures and applies cooldown deadlines, locally and (optionally) through Redis."""

    def __init__(
        self,
        deployments: Iterable[DeploymentState],
        settings: CooldownSettings,
        redis: Any = None,
        *,
        namespace: str | None = None,
    ) -> None:
        self.settings = settings
        self._by_id = {d.id: d for d in deployments}
        self._fails: dict[str, deque[float]] = {}
        self._redis = redis
        if namespace is None:
            namespace = f"{getattr(redis, 'key_prefix', 'sy')}:router"
        self._zkey = f"{namespace}:cooldowns"
        self._fail_prefix = f"{namespace}:fails:"
        self._next_refresh = 0.0
        self._refreshing = False
        # Deadlines this instance set itself; a refresh must not erase them before Redis has them.
        self._local_deadlines: dict[str, float] = {}

    @property
    def shared(self) -> bool:
        return self._redis is not None

    # ---- failures --------------------------------------------------------------------------

    async def record_failure(self, d: DeploymentState, *, retry_after: float | None = None) -> bool:
        """Count one failure of ``d``; return True if it is now cooled down.

        ``retry_after`` (from a 429) cools the deployment down for that long immediately.
        """
        now = time.time()
        if retry_after is not None and retry_after > 0:
            await self.cool_down(d, min(retry_after, MAX_RETRY_AFTER_COOLDOWN_S), now=now)
            return True
        s = self.settings
        count = self._count_local(d.id, now)
        if self._redis is not None:
            shared = await self._count_shared(d.id)
            if shared is not None:
                count = max(count, shared)
        if count >= max(1, s.allowed_fails):
            await self.cool_down(d, s.cooldown_time, now=now)
            self._fails.pop(d.id, None)
            return True
        return False

    def _count_local(self, dep_id: str, now: float) -> int:
        q = self._fails.get(dep_id)
        if q is None:
            q = self._fails[dep_id] = deque()
        q.append(now)
        horizon = now - self.settings.allowed_fails_window_s
        while q and q[0] < horizon:
            q.popleft()
        return len(q)

    async def _count_shared(self, dep_id: str) -> int | None:
        # A fixed window per failure streak: the first failure starts the TTL. Slightly coarser
        # than the local sliding window, but one round trip and no clock agreement needed.
        key = self._fail_prefix + dep_id
        ttl = max(1, int(self.settings.allowed_fails_window_s))

        async def op(client: Any) -> list[Any]:
            # SET NX EX starts the window on the first failure (EXPIRE NX needs Redis 7).
            async with client.pipeline(transaction=False) as pipe:
                pipe.set(key, 0, ex=ttl, nx=True)
                pipe.incr(key)
                return await pipe.execute()

        result = await self._call(op)
        return None if result is None else int(result[1])

    # ---- cooldowns -------------------------------------------------------------------------

    async def cool_down(self, d: DeploymentState, seconds: float, *, now: float | None = None) -> None:
        """Take ``d`` out of rotation for ``seconds`` here and, when shared, everywhere."""
        now = time.time() if now is None else now
        until = now + seconds
        if until > d.cooldown_until:
            d.cooldown_until = until
        self._local_deadlines[d.id] = d.cooldown_until
        log.info("deployment %s cooled down for %.1fs", d.id, seconds)
        if self._redis is None:
            return
        zkey, fkey, dep_id = self._zkey, self._fail_prefix + d.id, d.id
        horizon = int(max(self.settings.cooldown_time, MAX_RETRY_AFTER_COOLDOWN_S)) + 1

        async def op(client: Any) -> list[Any]:
            async with client.pipeline(transaction=False) as pipe:
                # GT keeps the later deadline when two instances cool the same deployment.
                pipe.zadd(zkey, {dep_id: until}, gt=True)
                pipe.zremrangebyscore(zkey, "-inf", now)
                pipe.delete(fkey)
                # The set disappears on its own once idle longer than any cooldown can last.
                pipe.expire(zkey, horizon)
                return await pipe.execute()

        await self._call(op)

    async def refresh(self, now: float | None = None) -> None:
        """Pull shared deadlines if the local copy is older than the refresh interval.

        Cheap when fresh (one float compare). Only one refresh runs at a time; concurrent
        callers use the current cache rather than queueing behind Redis.
        """
        if self._redis is None:
            return
        now = time.monotonic() if now is None else now
        if now < self._next_refresh or self._refreshing:
            return
        self._refreshing = True
        self._next_refresh = now + self.settings.refresh_interval_s
        wall = time.time()
        zkey = self._zkey
        try:
            rows = await self._call(lambda c: c.zrangebyscore(zkey, wall, "+inf", withscores=True))
        finally:
            self._refreshing = False
        if rows is None:
            return
        shared: dict[str, float] = {}
        for member, score in rows:
            dep_id = member.decode() if isinstance(member, bytes) else str(member)
            shared[dep_id] = float(score)
        for dep_id, d in self._by_id.items():
            until = shared.get(dep_id, 0.0)
            mine = self._local_deadlines.get(dep_id, 0.0)
            if mine <= wall:
                self._local_deadlines.pop(dep_id, None)
                mine = 0.0
            # Another instance may also have *cleared* a cooldown by letting it expire; take
            # the shared view, but never drop a deadline this instance set and still holds.
            d.cooldown_until = max(until, mine)

    async def _call(self, fn: Callable[[Any], Awaitable[T]]) -> T | None:
        """Run ``fn`` against Redis; ``None`` when Redis is unavailable (fail open)."""
        pool = self._redis
        try:
            if hasattr(pool, "call"):  # gateway.redis_pool.RedisPool: circuit breaker + timeouts
                return await pool.call("router", fn)
            return await fn(pool)
        except Exception as exc:
            log.warning("router shared cooldown state unavailable: %s", type(exc).__name__)
            return None

    def clear(self, d: DeploymentState) -> None:
        """Forget local failures of ``d`` (e.g. after a success)."""
        if d.id in self._fails:
            del self._fails[d.id]
