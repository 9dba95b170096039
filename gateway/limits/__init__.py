"""Rate limits: RPM, TPM and parallel requests per key, team, user, model, and gateway-wide.

``build_limiter`` picks the backend: Redis (exact across every gateway process sharing it)
when a pool is given, else the in-process limiter with the same semantics (one instance).
"""

from __future__ import annotations

from gateway.limits.errors import RateLimited
from gateway.limits.estimate import estimate_tokens
from gateway.limits.memory_limiter import MemoryLimiter
from gateway.limits.redis_limiter import RedisLimiter
from gateway.limits.settings import LimitSettings, ScopeLimits
from gateway.limits.window import NullAdmission, WindowAdmission, WindowLimiter
from gateway.redis_pool import RedisPool


def build_limiter(settings: LimitSettings, pool: RedisPool | None) -> WindowLimiter:
    """The limiter for this process: shared through ``pool`` when there is one."""
    if pool is None:
        return MemoryLimiter(settings)
    return RedisLimiter(settings, pool=pool, cluster=settings.redis_cluster)


__all__ = [
    "LimitSettings",
    "MemoryLimiter",
    "NullAdmission",
    "RateLimited",
    "RedisLimiter",
    "ScopeLimits",
    "WindowAdmission",
    "WindowLimiter",
    "build_limiter",
    "estimate_tokens",
]
