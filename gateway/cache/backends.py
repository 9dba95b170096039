"""Where cache entries live: Redis (shared by every gateway process) or in process.

Both store ``Entry`` values under a key (``get_entry``/``set_entry``). The stored value is the response body
bytes behind a 16-byte header (created_at, expires_at as little-endian doubles), so a hit
hands the stored bytes to the client without decoding or re-encoding JSON.
"""

from __future__ import annotations

import struct
import time
from typing import TYPE_CHECKING

from gateway.cache.lru import LRU, Entry

if TYPE_CHECKING:  # redis is imported only when a Redis URL is configured
    from gateway.redis_pool import RedisPool

_HEADER = struct.Struct("<dd")


def pack(entry: Entry) -> bytes:
    return _HEADER.pack(entry.created_at, entry.expires_at) + entry.body


def unpack(raw: bytes) -> Entry | None:
    if len(raw) < _HEADER.size:
        return None
    created, expires = _HEADER.unpack_from(raw)
    return Entry(raw[_HEADER.size :], created, expires)


class RedisCacheBackend:
    """Entries as plain string keys ``<prefix>:c:<digest>`` with a TTL (single-key ops: cluster-safe)."""

    def __init__(self, pool: RedisPool, prefix: str = "sy") -> None:
        self.pool = pool
        self.prefix = prefix

    def _key(self, key: str) -> str:
        return f"{self.prefix}:c:{key}"

    async def get_entry(self, key: str) -> Entry | None:
        """Raises ``RedisUnavailable`` when Redis cannot answer."""
        raw = await self.pool.execute("cache", "GET", self._key(key))
        if raw is None:
            return None
        e = unpack(raw)
        if e is None or e.expires_at <= time.time():
            return None
        return e

    async def set_entry(self, key: str, entry: Entry) -> None:
        ttl_ms = max(1, int((entry.expires_at - time.time()) * 1000))
        await self.pool.execute("cache", "SET", self._key(key), pack(entry), "PX", ttl_ms)

    def set_entry_nowait(self, key: str, entry: Entry) -> None:
        """Store without waiting (the reply is not needed; a failure only loses the entry)."""
        ttl_ms = max(1, int((entry.expires_at - time.time()) * 1000))
        self.pool.execute_nowait("cache", "SET", self._key(key), pack(entry), "PX", ttl_ms)


class MemoryCacheBackend:
    """In-process entries (no Redis configured): the same semantics for one instance."""

    def __init__(self, max_entries: int = 16384, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.lru = LRU(max_entries, max_bytes)

    async def get_entry(self, key: str) -> Entry | None:
        return self.lru.get(key)

    async def set_entry(self, key: str, entry: Entry) -> None:
        self.lru.put(key, entry)
