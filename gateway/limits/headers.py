"""OpenAI's rate-limit header formats."""

from __future__ import annotations

import math


def format_reset(ms: int) -> str:
    """A duration the way OpenAI writes ``x-ratelimit-reset-*``: ``"20ms"``, ``"1s"``, ``"6m0s"``."""
    ms = max(0, int(ms))
    if ms < 1000:
        return f"{ms}ms"
    minutes, rest_ms = divmod(ms, 60_000)
    seconds = f"{rest_ms / 1000:.3f}".rstrip("0").rstrip(".")
    return f"{minutes}m{seconds}s" if minutes else f"{seconds}s"


def retry_after_seconds(ms: int) -> int:
    """``Retry-After`` is whole seconds; round up so a client that obeys it is admitted."""
    return max(1, math.ceil(ms / 1000))
