"""Virtual key material: generation, hashing, display names."""

from __future__ import annotations

import hashlib
import secrets

KEY_PREFIX = "sk-"


def generate_key() -> str:
    """A new key: ``sk-`` plus 192 random bits (url-safe base64), from ``secrets``."""
    return KEY_PREFIX + secrets.token_urlsafe(24)


def hash_key(key: str) -> str:
    """The SHA-256 hex digest we store and look keys up by (keys themselves are never stored)."""
    return hashlib.sha256(key.encode()).hexdigest()


def display_name(key: str) -> str:
    """An abbreviation safe to show in listings, e.g. ``sk-...Qx4z``."""
    return f"{key[:3]}...{key[-4:]}"
