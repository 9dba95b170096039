"""The error every Redis-backed stage catches; its own module so importing it does not import redis."""

from __future__ import annotations


class RedisUnavailable(Exception):
    """Redis could not be used for this call (error, timeout, or the circuit is open)."""
