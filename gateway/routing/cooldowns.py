"""Cooldowns: take a deployment out of rotation after repeated failures.

A deployment that fails ``allowed_fails`` times within ``allowed_fails_window_s`` is cooled
down for ``cooldown_time`` seconds; a 429 carrying ``Retry-After`` cools it down for that long
at once. Deadlines live on ``DeploymentState.cooldown_until`` so the pick reads a float.

The only deployment of a model (a "lone" deployment) is different: cooling it down does not
move traffic anywhere, it answers every caller 503 for ``cooldown_time``. At 1,100 req/s, 25
transient failures (a burst of resets on pooled connections) turned into thousands of 503s.
So, as LiteLLM does (PRs 5673, 7823, 8668), a lone deployment is cooled down only when

- ``router_settings.allowed_fails`` was set explicitly in the config: the operator asked for
  the counting rule above, and gets it unchanged (Retry-After included); or
- every call to it failed and there were many: ``single_deployment_min_fails`` (1,000, as
  LiteLLM's ``SINGLE_DEPLOYMENT_TRAFFIC_FAILURE_THRESHOLD``) failures in a row, with no success
  in between, within ``allowed_fails_window_s``. That is an upstream that is down, not a blip,
  under enough traffic (>= ~17 req/s for the default 60 s window) that shedding it with fast
  503s saves callers the wait and the upstream the load. Counting failures *in a row* is
  stricter than LiteLLM's "100% of this minute's calls", which a minute boundary can split.
  The streak is counted per instance (a success must end it, and successes are not shared);
  once an instance trips it, the cooldown is shared through Redis as usual.

An upstream 429 with ``Retry-After`` does not cool a lone deployment down (LiteLLM: 429s cool
down only deployments of multi-deployment groups): the upstream keeps answering each caller
with its own 429 and ``Retry-After``, which is more precise than our 503 for everyone (its limit
may be per request size or free up early), and costs it almost nothing. Groups of two or more
deployments keep the counting rule above whatever the config says.

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
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from gateway.routing.metrics import count_cooldown
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
    # Whether the config set allowed_fails itself: then lone deployments follow it too.
    allowed_fails_set: bool = False
    # Failures in a row that cool down a lone deployment when allowed_fails was not set.
    single_deployment_min_fails: int = 1000


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
        self._by_id: dict[str, DeploymentState] = {}
        self._fails: dict[str, deque[float]] = {}
        # Lone deployments under the "every call failed" rule; for them ``_fails`` holds the
        # current streak (a success clears it).
        self._lone: frozenset[str] = frozenset()
        # Deadlines this instance set itself; a refresh must not erase them before Redis has them.
        self._local_deadlines: dict[str, float] = {}
        self.track(deployments)
        self._redis = redis
        if namespace is None:
            namespace = f"{getattr(redis, 'key_prefix', 'sy')}:router"
        self._zkey = f"{namespace}:cooldowns"
        self._fail_prefix = f"{namespace}:fails:"
        self._next_refresh = 0.0
        self._refreshing = False

    def track(self, deployments: Iterable[DeploymentState]) -> None:
        """Watch exactly ``deployments`` from now on (the router's models changed while running):
        which are lone is worked out again, and what was counted for deployments gone is dropped."""
        self._by_id = {d.id: d for d in deployments}
        self._lone = frozenset()
        if not self.settings.allowed_fails_set:
            group_sizes = Counter(d.model_name for d in self._by_id.values())
            self._lone = frozenset(i for i, d in self._by_id.items() if group_sizes[d.model_name] == 1)
        for table in (self._fails, self._local_deadlines):
            for gone in [i for i in table if i not in self._by_id]:
                del table[gone]

    @property
    def shared(self) -> bool:
        return self._redis is not None

    # ---- failures --------------------------------------------------------------------------

    async def record_failure(self, d: DeploymentState, *, retry_after: float | None = None) -> bool:
        """Count one failure of ``d``; return True if it is now cooled down.

        ``retry_after`` (from a 429) cools the deployment down for that long immediately,
        except for a lone deployment (see the module docstring).
        """
        now = time.time()
        if d.id in self._lone:
            return await self._record_lone_failure(d, now)
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

    async def _record_lone_failure(self, d: DeploymentState, now: float) -> bool:
        # Counted locally only: the streak ends at this instance's next success, and a Redis
        # round trip per failure is what a failure storm can least afford.
        if self._count_local(d.id, now) < self.settings.single_deployment_min_fails:
            return False
        log.warning("deployment %s, the only one of its model, failed every call: cooling it down", d.id)
        await self.cool_down(d, self.settings.cooldown_time, now=now)
        self._fails.pop(d.id, None)
        return True

    def record_success(self, d: DeploymentState) -> None:
        """A call to ``d`` succeeded: a lone deployment's failure streak ends.

        Other deployments keep counting failures within the window regardless of successes.
        """
        if self._fails and d.id in self._lone:
            self._fails.pop(d.id, None)

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
        count_cooldown(d.id)
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

    def refresh_due(self) -> bool:
        """Whether ``refresh`` would ask Redis now (so the hot path skips the call otherwise)."""
        return self._redis is not None and not self._refreshing and time.monotonic() >= self._next_refresh

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
