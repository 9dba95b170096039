"""Budget durations like LiteLLM's: ``30s``, ``15m``, ``1h``, ``30d``, ``1mo``."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h|d|w|mo)\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "mo": 30 * 86400}
_MAX_SECONDS = 100 * 366 * 86400


def parse_duration(text: str) -> timedelta:
    """The length of a budget period; raises ``ValueError`` for anything else."""
    match = _DURATION.match(text)
    if not match or int(match.group(1)) <= 0:
        raise ValueError(
            f"invalid duration {text!r}: expected a positive number and one of s, m, h, d, w, mo"
        )
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if seconds > _MAX_SECONDS:
        # Also keeps ``now + duration`` inside datetime's range (it would raise OverflowError, a 500).
        raise ValueError(f"invalid duration {text!r}: at most 100 years")
    return timedelta(seconds=seconds)


def next_reset(duration: str | None, now: datetime) -> datetime | None:
    """When a budget with this duration, starting ``now``, resets next."""
    return now + parse_duration(duration) if duration else None
