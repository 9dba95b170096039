"""Exact-match response cache: canonical request hash -> stored response bytes, tenant-scoped."""

from __future__ import annotations

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
