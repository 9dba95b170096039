"""Rate limits: RPM, TPM and parallel requests per key, team, user, model, and gateway-wide.

``build_limiter`` picks the backend: Redis (exact across every gateway process sharing it)
when a pool is given, else the in-process limiter with the same semantics (one instance).
Names are imported on first use (PEP 562) so that ``gateway.config``'s import of
``gateway.limits.settings`` does not import redis.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.lazy_exports import lazy_exports

if TYPE_CHECKING:
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
        from gateway.limits.memory_limiter import MemoryLimiter

        return MemoryLimiter(settings)
    from gateway.limits.redis_limiter import RedisLimiter

    return RedisLimiter(settings, pool=pool, cluster=settings.redis_cluster)


_HOMES = {
    "LimitSettings": "settings",
    "MemoryLimiter": "memory_limiter",
    "NullAdmission": "window",  # defined in gateway.null_stages, imported there
    "RateLimited": "errors",
    "RedisLimiter": "redis_limiter",
    "ScopeLimits": "settings",
    "WindowAdmission": "window",
    "WindowLimiter": "window",
    "estimate_tokens": "estimate",
}

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


__getattr__ = lazy_exports(__name__, _HOMES)
