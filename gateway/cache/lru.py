"""A small in-process LRU in front of Redis: bounded by entries and bytes, entries expire."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(slots=True)
class Entry:
    body: bytes
    created_at: float  # unix seconds
    expires_at: float  # unix seconds
    # The SSE replay, built on the first streamed hit and reused after.
    sse: bytes | None = None


class LRU:
    """Not thread-safe; the gateway is one event loop per process."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self._d: OrderedDict[str, Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._d)

    def get(self, key: str, now: float | None = None) -> Entry | None:
        e = self._d.get(key)
        if e is None:
            return None
        if e.expires_at <= (time.time() if now is None else now):
            self._drop(key)
            return None
        self._d.move_to_end(key)
        return e

    def put(self, key: str, entry: Entry) -> None:
        size = len(entry.body)
        if self.max_entries <= 0 or size > self.max_bytes:
            return
        if key in self._d:
            self._drop(key)
        self._d[key] = entry
        self.bytes += size
        while len(self._d) > self.max_entries or self.bytes > self.max_bytes:
            self._drop(next(iter(self._d)))

    def _drop(self, key: str) -> None:
        e = self._d.pop(key)
        self.bytes -= len(e.body)
