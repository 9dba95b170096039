"""The in-process limiter: the same sliding-window semantics as ``admit.lua``, for one instance.

Used when no Redis is configured, and as the fallback while Redis is down (then each instance
enforces the limits, or its share of them, on its own).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from gateway.limits.window import (
    ADMITTED,
    OVER_PARALLEL,
    OVER_RPM,
    OVER_TPM,
    TOO_LARGE,
    Reservation,
    ScopeResult,
    WindowLimiter,
)
from gateway.pipeline import LimitScope


@dataclass(slots=True)
class _ScopeState:
    requests: dict[int, int] = field(default_factory=dict)  # second -> requests
    tokens: dict[int, int] = field(default_factory=dict)  # second -> tokens
    leases: dict[str, float] = field(default_factory=dict)  # lease -> expiry (ms)


@dataclass(slots=True)
class MemoryLimiter(WindowLimiter):
    """Asyncio is single-threaded and ``_reserve`` never awaits, so each admission is atomic."""

    _state: dict[tuple[str, str], _ScopeState] = field(default_factory=dict)

    def _now_ms(self) -> int:
        return int(time.time() * 1000)

    def _scope_state(self, scope: LimitScope) -> _ScopeState:
        key = (scope.scope, scope.id)
        st = self._state.get(key)
        if st is None:
            st = self._state[key] = _ScopeState()
        return st

    async def _reserve(
        self, scopes: list[LimitScope], estimated: int, lease: str, *, hold: bool = True
    ) -> list[ScopeResult]:
        now = self._now_ms()
        results = [self._reserve_one(s, estimated, lease, now, hold) for s in scopes]
        if len(self._state) > 100_000:
            self._evict(now)
        return results

    def record(self, scopes: list[LimitScope], estimated: int) -> None:
        """Count a request admitted elsewhere (by Redis) in each scope's window, without checking.

        Old buckets are pruned here too: a scope that is only ever recorded must stay bounded.
        """
        now = self._now_ms()
        sec = now // 1000
        window = self.settings.window_seconds
        for s in scopes:
            st = self._scope_state(s)
            st.requests[sec] = st.requests.get(sec, 0) + 1
            if estimated:
                st.tokens[sec] = st.tokens.get(sec, 0) + estimated
            if len(st.requests) > window or len(st.tokens) > window:
                oldest = sec - window + 1
                for d in (st.requests, st.tokens):
                    for b in [b for b in d if b < oldest]:
                        del d[b]
        if len(self._state) > 100_000:
            self._evict(now)

    def _reserve_one(self, s: LimitScope, est: int, lease: str, now: int, hold: bool = True) -> ScopeResult:
        window = self.settings.window_seconds
        st = self._scope_state(s)
        sec = now // 1000
        oldest = sec - window + 1
        for d in (st.requests, st.tokens):
            for b in [b for b in d if b < oldest]:
                del d[b]
        reqs = sum(st.requests.values())
        toks = sum(st.tokens.values())
        rmin = min((b for b, v in st.requests.items() if v > 0), default=None)
        tmin = min((b for b, v in st.tokens.items() if v > 0), default=None)
        rpm, tpm, maxp = s.rpm or 0, s.tpm or 0, s.max_parallel_requests or 0
        reason, retry = ADMITTED, 0
        if rpm and reqs + 1 > rpm:
            reason, retry = OVER_RPM, ((rmin or sec) + window) * 1000 - now
        elif tpm and est > tpm:
            reason, retry = TOO_LARGE, window * 1000
        elif tpm and toks + est > tpm:
            reason, retry = OVER_TPM, window * 1000
            need, freed = toks + est - tpm, 0
            for b in sorted(st.tokens):
                freed += st.tokens[b]
                if freed >= need:
                    retry = (b + window) * 1000 - now
                    break
        par = 0
        if maxp:
            for k in [k for k, exp in st.leases.items() if exp <= now]:
                del st.leases[k]
            par = len(st.leases)
            if reason == ADMITTED and par >= maxp:
                reason, retry = OVER_PARALLEL, 1000
        if reason == ADMITTED:
            st.requests[sec] = st.requests.get(sec, 0) + 1
            if est:
                st.tokens[sec] = st.tokens.get(sec, 0) + est
            reqs += 1
            toks += est
            rmin = sec if rmin is None else rmin
            tmin = sec if tmin is None and est else tmin
            if maxp and hold:
                st.leases[lease] = now + self.settings.lease_ttl_seconds * 1000
                par += 1
        reset_r = (rmin + window) * 1000 - now if rmin is not None else 0
        reset_t = (tmin + window) * 1000 - now if tmin is not None else 0
        return ScopeResult(reason, reqs, toks, par, int(reset_r), int(reset_t), int(retry), sec)

    async def _release(self, reservation: Reservation, actual_tokens: int, *, rollback: bool) -> None:
        now = self._now_ms()
        sec = now // 1000
        window = self.settings.window_seconds
        est = reservation.estimated_tokens
        for s, b in zip(reservation.scopes, reservation.buckets, strict=True):
            st = self._state.get((s.scope, s.id))
            if st is None:
                continue
            if b >= sec - window + 1:
                if rollback and b in st.requests:
                    st.requests[b] -= 1
                if actual_tokens != est:
                    st.tokens[b] = st.tokens.get(b, 0) + actual_tokens - est
            elif actual_tokens > 0:
                st.tokens[sec] = st.tokens.get(sec, 0) + actual_tokens
            st.leases.pop(reservation.lease, None)

    def _evict(self, now: int) -> None:
        """Drop idle scopes so a stream of one-off keys cannot grow memory without bound."""
        oldest = now // 1000 - self.settings.window_seconds + 1
        for key in [
            k
            for k, st in self._state.items()
            if not st.leases and all(b < oldest for b in st.requests) and all(b < oldest for b in st.tokens)
        ]:
            del self._state[key]
