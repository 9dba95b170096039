"""Exact-match response cache: canonical request hash -> stored response bytes, tenant-scoped.

Names are imported on first use (PEP 562): ``gateway.config`` imports ``gateway.cache.settings``
at startup, and that must not pull in the service and its backends when no cache is configured.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from gateway.cache.keys import CacheControl, cache_key, canonical_request, parse_cache_control
    from gateway.cache.lru import LRU, Entry
    from gateway.cache.service import (
        HIT_HEADER,
        KEY_HEADER,
        CachePlan,
        ResponseCacheService,
        StreamRecorder,
        build_cache,
    )
    from gateway.cache.settings import CacheSettings
    from gateway.cache.stream import StreamAssembler, replay_sse

_HOMES = {
    "HIT_HEADER": "service",
    "KEY_HEADER": "service",
    "LRU": "lru",
    "CacheControl": "keys",
    "CachePlan": "service",
    "CacheSettings": "settings",
    "Entry": "lru",
    "ResponseCacheService": "service",
    "StreamAssembler": "stream",
    "StreamRecorder": "service",
    "build_cache": "service",
    "cache_key": "keys",
    "canonical_request": "keys",
    "parse_cache_control": "keys",
    "replay_sse": "stream",
}

__all__ = [
    "HIT_HEADER",
    "KEY_HEADER",
    "LRU",
    "CacheControl",
    "CachePlan",
    "CacheSettings",
    "Entry",
    "ResponseCacheService",
    "StreamAssembler",
    "StreamRecorder",
    "build_cache",
    "cache_key",
    "canonical_request",
    "parse_cache_control",
    "replay_sse",
]


__getattr__ = lazy_exports(__name__, _HOMES)
