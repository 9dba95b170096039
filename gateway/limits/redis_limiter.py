"""The Redis limiter: limits that hold exactly across every gateway process sharing one Redis.

One ``EVALSHA admit.lua`` per admission covers every applicable scope (key, team, user,
per-model, global): the script checks them all and reserves in all or none, atomically, in
one round trip, with Redis's clock. Commands of concurrent requests share round trips through
the pool's auto-pipeline.

Redis Cluster: a script may only touch keys of one slot, and a team's counters must be shared
by all of its keys, so scopes cannot share one hash tag. Each scope's keys share a tag
(``sy:{team:t1}:w`` / ``:p``); with ``cluster=True`` the limiter sends one script call per
scope (pipelined: still one round trip) and gets all-or-nothing by rolling back the scopes that
reserved when another refused. The rollback can make a concurrent request see a reservation
about to be returned, so at a limit under contention it may refuse slightly early, never admit
too many. On a single Redis (the default) none of that is needed.

Settling (real token usage, freeing the parallel-request lease) is one fire-and-forget
``EVALSHA settle.lua``: nothing waits for it.

Redis outage (the pool's ``failure_mode``): ``closed`` answers 503; ``open`` (the default) admits
against an in-process limiter with the full limits, so N instances admit up to N times a limit;
``divide`` admits against limit / N, N being the live instance count last seen in Redis (see
``gateway.limits.instances``). In ``divide`` mode every admission granted through Redis is also
counted in the in-process window, so when Redis goes away each instance already knows what it
admitted in the current window and does not start again from zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gateway.limits.errors import redis_unavailable
from gateway.limits.instances import InstanceCount
from gateway.limits.memory_limiter import MemoryLimiter
from gateway.limits.window import NullAdmission, Reservation, ScopeResult, WindowAdmission, WindowLimiter
from gateway.pipeline import LimitScope
from gateway.redis_pool import LuaScript, RedisPool, RedisUnavailable

log = logging.getLogger("switchyard.limits")

_HERE = Path(__file__).parent
ADMIT = LuaScript.from_file(_HERE / "admit.lua")
SETTLE = LuaScript.from_file(_HERE / "settle.lua")
RENEW = LuaScript.from_file(_HERE / "renew.lua")


def _parse(raw: bytes) -> list[ScopeResult]:
    """admit.lua's reply: per scope 8 comma-separated integers, scopes separated by ';'."""
    return [ScopeResult(*map(int, part.split(b","))) for part in raw.split(b";")]


def scope_keys(prefix: str, scope: LimitScope) -> tuple[str, str]:
    """``(window hash, lease zset)`` for a scope, sharing one hash tag (one cluster slot)."""
    ident = scope.id
    if len(ident) > 64 or "{" in ident or "}" in ident:
        ident = hashlib.sha256(ident.encode()).hexdigest()[:32]
    tag = f"{prefix}:{{{scope.scope}:{ident}}}"
    return f"{tag}:w", f"{tag}:p"


@dataclass(slots=True)
class RedisLimiter(WindowLimiter):
    """Shared limits over ``pool``; falls back to an in-process limiter (fail-open) or 503 (fail-closed)."""

    pool: RedisPool | None = None
    cluster: bool = False
    _fallback: MemoryLimiter | None = None
    _leases: dict[str, list[str]] = field(default_factory=dict)  # lease -> zset keys holding it
    _renewer: asyncio.Task[None] | None = None
    _keys: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    _loaded: bool = False
    _instances: InstanceCount | None = None  # divide mode only
    _divided: int = 0  # the instance count the current outage divides by (0: not in an outage)

    def __post_init__(self) -> None:
        assert self.pool is not None, "RedisLimiter needs a pool"
        self._fallback = MemoryLimiter(self.settings)
        if self.pool.failure_mode == "divide":
            self._instances = InstanceCount(
                self.pool, f"{self.settings.key_prefix}:instances", self.settings.instance_heartbeat_seconds
            )
            # Built inside the app's lifespan: heartbeat from the start, not from the first request.
            with contextlib.suppress(RuntimeError):
                self._instances.start()

    def _scope_keys(self, scope: LimitScope) -> tuple[str, str]:
        k = (scope.scope, scope.id)
        keys = self._keys.get(k)
        if keys is None:
            if len(self._keys) > 50_000:
                self._keys.clear()
            keys = self._keys[k] = scope_keys(self.settings.key_prefix, scope)
        return keys

    async def admit_scopes(
        self, scopes: list[LimitScope], estimated_tokens: int, *, instant: bool = False
    ) -> WindowAdmission:
        assert self.pool is not None and self._fallback is not None
        instances = self._instances
        if instances is not None and not instances.started:
            instances.start()
        try:
            admission = await WindowLimiter.admit_scopes(self, scopes, estimated_tokens, instant=instant)
        except RedisUnavailable:
            if self.pool.failure_mode == "closed":
                raise redis_unavailable() from None
            if instances is None:
                # Fail-open: this instance enforces the full limits alone until Redis is back.
                return await self._fallback.admit_scopes(scopes, estimated_tokens, instant=instant)
            if self._divided != instances.count:
                self._divided = instances.count
                log.warning("redis down: limits divided by %d instances until it is back", self._divided)
            shares = [_share(scope, instances.count) for scope in scopes]
            return await self._fallback.admit_scopes(shares, estimated_tokens, instant=instant)
        if instances is not None:
            self._divided = 0
            # Mirror what Redis admitted, so an outage starts from this instance's own usage.
            self._fallback.record(scopes, 0 if instant else estimated_tokens)
        return admission

    async def _reserve(
        self, scopes: list[LimitScope], estimated: int, lease: str, *, hold: bool = True
    ) -> list[ScopeResult]:
        s = self.settings
        assert self.pool is not None
        if not self._loaded:
            await self.pool.load_scripts("limits", ADMIT, SETTLE, RENEW)
            self._loaded = True
        # A lease TTL of 0 tells admit.lua to check the parallel slots without taking one.
        head = (estimated, lease, int(s.lease_ttl_seconds * 1000) if hold else 0, s.window_seconds)
        if not self.cluster:
            keys: list[str] = []
            args: list[Any] = list(head)
            for scope in scopes:
                keys.extend(self._scope_keys(scope))
                args += (scope.rpm or 0, scope.tpm or 0, scope.max_parallel_requests or 0)
            raw = await self.pool.evalsha("limits", ADMIT, keys, args)
            return _parse(raw)
        calls = [
            self.pool.evalsha(
                "limits",
                ADMIT,
                self._scope_keys(scope),
                (*head, scope.rpm or 0, scope.tpm or 0, scope.max_parallel_requests or 0),
            )
            for scope in scopes
        ]
        # Each call would raise on its own; gather keeps them in one pipelined batch.
        replies = await asyncio.gather(*calls, return_exceptions=True)
        results: list[ScopeResult] = []
        failure: BaseException | None = None
        for r in replies:
            if isinstance(r, BaseException):
                failure = r
                results.append(ScopeResult(-1, 0, 0, 0, 0, 0, 0, 0))
            else:
                results.extend(_parse(r))
        if failure is not None:
            taken = [i for i, r in enumerate(results) if r.reason == 0]
            if taken:
                back = Reservation(
                    [scopes[i] for i in taken], [results[i].bucket for i in taken], estimated, lease
                )
                await self._release(back, 0, rollback=True)
            raise failure
        return results

    async def _settle(self, reservation: Reservation, actual_tokens: int) -> None:
        # Nothing to correct when no scope counts tokens or holds a slot (RPM only).
        if not any(sc.tpm or sc.max_parallel_requests for sc in reservation.scopes):
            return
        # Fire-and-forget: the response is already on its way; nothing waits on this round trip.
        await self._release(reservation, actual_tokens, rollback=False)

    async def _release(self, reservation: Reservation, actual_tokens: int, *, rollback: bool) -> None:
        s = self.settings
        assert self.pool is not None
        holds_lease = self._leases.pop(reservation.lease, None) is not None or rollback
        head = (
            -1 if rollback else 0,
            reservation.estimated_tokens,
            actual_tokens,
            reservation.lease,
            s.window_seconds,
        )
        per_scope = [
            (self._scope_keys(scope), (bucket, 1 if holds_lease and scope.max_parallel_requests else 0))
            for scope, bucket in zip(reservation.scopes, reservation.buckets, strict=True)
        ]
        groups = [per_scope] if not self.cluster else [[p] for p in per_scope]
        for group in groups:
            keys = [k for ks, _ in group for k in ks]
            args = [*head, *(a for _, sa in group for a in sa)]
            # If Redis is down the token correction is lost and the lease expires on its own.
            self.pool.evalsha_nowait("limits", SETTLE, keys, args)

    def _partial_reserve(self) -> bool:
        # One script over every scope reserves all or nothing; per-scope calls (cluster) do not.
        return self.cluster

    def _held(self, reservation: Reservation) -> None:
        keys = [self._scope_keys(sc)[1] for sc in reservation.scopes if sc.max_parallel_requests]
        if not keys:
            return
        self._leases[reservation.lease] = keys
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew_forever())

    async def _renew_forever(self) -> None:
        """Keep this process's live leases from expiring (a dead process's leases do expire)."""
        ttl_ms = int(self.settings.lease_ttl_seconds * 1000)
        interval = self.settings.lease_ttl_seconds / 3
        assert self.pool is not None
        while True:
            await asyncio.sleep(interval)
            pairs = [(key, lease) for lease, keys in list(self._leases.items()) for key in keys]
            groups = [pairs] if not self.cluster else [[p] for p in pairs]
            for group in groups:
                if group:
                    with contextlib.suppress(RedisUnavailable):
                        await self.pool.evalsha(
                            "limits", RENEW, [k for k, _ in group], [ttl_ms, *(lease for _, lease in group)]
                        )

    async def drain(self) -> None:
        await WindowLimiter.drain(self)
        if self.pool is not None:
            await self.pool.barrier()

    async def close(self) -> None:
        await self.drain()
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        if self._fallback is not None:
            await self._fallback.close()
        if self._instances is not None:
            await self._instances.close()


def _share(scope: LimitScope, instances: int) -> LimitScope:
    """``scope`` with each limit divided among ``instances`` (rounded down, at least 1)."""
    if instances <= 1:
        return scope

    def part(limit: int | None) -> int | None:
        return None if limit is None else max(1, limit // instances)

    return replace(
        scope,
        rpm=part(scope.rpm),
        tpm=part(scope.tpm),
        max_parallel_requests=part(scope.max_parallel_requests),
    )


__all__ = ["NullAdmission", "RedisLimiter", "scope_keys"]
