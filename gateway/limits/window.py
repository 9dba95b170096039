"""The shared shape of both limiters (Redis and in-process): scope results, headers, refusals, settling.

A backend implements ``_reserve`` (check-and-reserve every scope; return one ``ScopeResult``
each) and ``_release`` (settle or roll back the scopes it reserved). The sliding-window
semantics are documented in ``admit.lua``; ``MemoryLimiter`` mirrors them in Python.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from gateway.limits.errors import RateLimited
from gateway.limits.headers import format_reset, retry_after_seconds
from gateway.limits.metrics import count_refusal
from gateway.limits.scopes import applicable_scopes
from gateway.limits.settings import LimitSettings
from gateway.null_stages import NullAdmission
from gateway.pipeline import LimitScope, Principal, Usage

log = logging.getLogger("switchyard.limits")

ADMITTED, OVER_RPM, OVER_TPM, OVER_PARALLEL, TOO_LARGE = 0, 1, 2, 3, 4

# Lease ids: unique across processes (random prefix) without a getrandom() syscall per request.
_LEASE_PREFIX = uuid.uuid4().hex[:12]
_lease_counter = itertools.count(1)


@dataclass(frozen=True, slots=True)
class ScopeResult:
    """One scope's answer (counts include this request when admitted)."""

    reason: int
    requests: int
    tokens: int
    parallel: int
    reset_requests_ms: int
    reset_tokens_ms: int
    retry_ms: int
    bucket: int


@dataclass(slots=True)
class Reservation:
    """What an admission holds, so it can be settled (or rolled back) in every scope."""

    scopes: list[LimitScope]
    buckets: list[int]
    estimated_tokens: int
    lease: str
    held: bool = True  # False: an instant admission (a cache hit) that holds no slot and no tokens


class WindowAdmission:
    """A granted admission; ``settle`` is idempotent and never blocks on Redis."""

    __slots__ = ("_limiter", "_reservation", "_settled", "headers")

    def __init__(self, limiter: WindowLimiter, reservation: Reservation, headers: dict[str, str]) -> None:
        self._limiter = limiter
        self._reservation = reservation
        self._settled = False
        self.headers = headers

    @property
    def settled(self) -> bool:
        return self._settled

    async def settle(self, usage: Usage | None) -> None:
        if self._settled:
            return
        self._settled = True
        actual = usage.total_tokens if usage is not None else 0
        reservation = self._reservation
        if not reservation.held and actual == reservation.estimated_tokens:
            return  # an instant admission: nothing held, nothing to correct, no round trip
        await self._limiter._settle(reservation, actual)


def _label(scope: LimitScope) -> str:
    if scope.scope == "key":
        return "this key"
    if scope.scope == "global":
        return "the gateway"
    if scope.scope == "model":
        return f"model {scope.id}"
    if scope.scope.endswith("_model"):
        owner, _, model = scope.id.partition(":")
        kind = scope.scope.removesuffix("_model")
        return f"model {model} on this key" if kind == "key" else f"model {model} for {kind} {owner}"
    return f"{scope.scope} {scope.id}"


@dataclass(slots=True)
class WindowLimiter(ABC):
    """Admission against every applicable scope, all-or-nothing."""

    settings: LimitSettings
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def admit(
        self, principal: Principal, model: str, estimated_tokens: int, *, instant: bool = False
    ) -> WindowAdmission | NullAdmission:
        """Admit one request; ``instant`` for one answered at once (a cache hit, see ``admit_scopes``)."""
        if not self.settings.enabled:
            return NullAdmission()
        scopes = applicable_scopes(principal, model, self.settings)
        if not scopes:
            return NullAdmission()
        return await self.admit_scopes(scopes, max(0, int(estimated_tokens)), instant=instant)

    async def admit_scopes(
        self, scopes: list[LimitScope], estimated_tokens: int, *, instant: bool = False
    ) -> WindowAdmission:
        """Check and reserve every scope, all-or-nothing; raises ``RateLimited`` when one refuses.

        An ``instant`` admission is for a request answered in the same moment (a cache hit): it
        counts as a request and is refused like any other (RPM, a full TPM window, every parallel
        slot taken), but reserves no tokens (it spends none) and holds no parallel slot (it is
        over at once), so it needs no settling round trip.
        """
        if instant:
            estimated_tokens = 0
        lease = f"{_LEASE_PREFIX}{next(_lease_counter):x}"
        results = await self._reserve(scopes, estimated_tokens, lease, hold=not instant)
        refused = next((i for i, r in enumerate(results) if r.reason != ADMITTED), None)
        if refused is not None:
            taken = (
                [i for i, r in enumerate(results) if r.reason == ADMITTED] if self._partial_reserve() else []
            )
            if taken:
                # Another scope said no: give back what the others reserved (all-or-nothing).
                back = Reservation(
                    [scopes[i] for i in taken], [results[i].bucket for i in taken], estimated_tokens, lease
                )
                self._spawn(self._release(back, 0, rollback=True))
            raise self._refusal(scopes[refused], results[refused], estimated_tokens)
        reservation = Reservation(scopes, [r.bucket for r in results], estimated_tokens, lease, not instant)
        if reservation.held:
            self._held(reservation)
        return WindowAdmission(self, reservation, self._headers(scopes, results))

    def _headers(self, scopes: list[LimitScope], results: list[ScopeResult]) -> dict[str, str]:
        """OpenAI's x-ratelimit-* headers from the tightest scope for requests and for tokens."""
        headers: dict[str, str] = {}
        best_r: tuple[int, int, int] | None = None  # remaining, limit, reset
        best_t: tuple[int, int, int] | None = None
        for s, r in zip(scopes, results, strict=True):
            if s.rpm is not None:
                cand = (max(0, s.rpm - r.requests), s.rpm, r.reset_requests_ms)
                if best_r is None or cand[0] < best_r[0]:
                    best_r = cand
            if s.tpm is not None:
                cand = (max(0, s.tpm - r.tokens), s.tpm, r.reset_tokens_ms)
                if best_t is None or cand[0] < best_t[0]:
                    best_t = cand
        if best_r is not None:
            headers["x-ratelimit-limit-requests"] = str(best_r[1])
            headers["x-ratelimit-remaining-requests"] = str(best_r[0])
            headers["x-ratelimit-reset-requests"] = format_reset(best_r[2])
        if best_t is not None:
            headers["x-ratelimit-limit-tokens"] = str(best_t[1])
            headers["x-ratelimit-remaining-tokens"] = str(best_t[0])
            headers["x-ratelimit-reset-tokens"] = format_reset(best_t[2])
        return headers

    def _refusal(self, scope: LimitScope, r: ScopeResult, estimated: int) -> RateLimited:
        window = self.settings.window_seconds
        per = "min" if window == 60 else f"{window}s"
        wait = format_reset(r.retry_ms)
        headers: dict[str, str] = {
            "retry-after": str(retry_after_seconds(r.retry_ms)),
            "retry-after-ms": str(max(1, r.retry_ms)),
        }
        if r.reason == OVER_RPM:
            kind = "requests"
            msg = (
                f"Rate limit reached for {_label(scope)} on requests per {per} (RPM): "
                f"Limit {scope.rpm}, Used {r.requests}, Requested 1. Please try again in {wait}."
            )
            headers |= {
                "x-ratelimit-limit-requests": str(scope.rpm),
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": format_reset(r.reset_requests_ms),
            }
        elif r.reason in (OVER_TPM, TOO_LARGE):
            kind = "tokens"
            msg = (
                f"Rate limit reached for {_label(scope)} on tokens per {per} (TPM): "
                f"Limit {scope.tpm}, Used {r.tokens}, Requested {estimated}. "
                + (
                    "The request is larger than the limit; reduce max_tokens or the prompt."
                    if r.reason == TOO_LARGE
                    else f"Please try again in {wait}."
                )
            )
            headers |= {
                "x-ratelimit-limit-tokens": str(scope.tpm),
                "x-ratelimit-remaining-tokens": str(max(0, (scope.tpm or 0) - r.tokens)),
                "x-ratelimit-reset-tokens": format_reset(r.reset_tokens_ms),
            }
        else:
            kind = "requests"
            msg = (
                f"Rate limit reached for {_label(scope)} on parallel requests: "
                f"Limit {scope.max_parallel_requests}, In flight {r.parallel}. Please try again in {wait}."
            )
        count_refusal(scope.scope, "parallel" if r.reason == OVER_PARALLEL else kind)
        return RateLimited(msg, kind=kind, headers=headers)

    async def _settle(self, reservation: Reservation, actual_tokens: int) -> None:
        """Settle an admission; the Redis limiter overrides this to not wait on Redis."""
        await self._release(reservation, actual_tokens, rollback=False)

    def _spawn(self, coro: object) -> None:
        """Run settle work in the background (fire-and-forget), keeping a reference until done."""
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for background settles (tests, graceful shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _partial_reserve(self) -> bool:
        """True when a refusal may leave other scopes reserved (they are then rolled back)."""
        return True

    def _held(self, reservation: Reservation) -> None:  # noqa: B027 - optional hook
        """Hook: a reservation is now held (the Redis limiter renews its leases)."""

    async def close(self) -> None:
        await self.drain()

    @abstractmethod
    async def _reserve(
        self, scopes: list[LimitScope], estimated: int, lease: str, *, hold: bool = True
    ) -> list[ScopeResult]:
        """Check and reserve; ``hold=False`` checks parallel slots without taking one."""

    @abstractmethod
    async def _release(self, reservation: Reservation, actual_tokens: int, *, rollback: bool) -> None: ...
