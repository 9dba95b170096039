"""Cache keys and per-request cache control.

The key is a SHA-256 over the tenant scope and a canonical JSON of every request field that
can change the answer. Fields that cannot (``user``, ``stream``, ``stream_options``, ``cache``,
``metadata``...) are dropped; everything else stays, so an unknown new parameter makes a
different key rather than a wrong hit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

# Request fields that do not change the completion.
IGNORED_FIELDS = frozenset(
    {
        "user",
        "stream",
        "stream_options",
        "cache",
        "metadata",
        "store",
        "service_tier",
        "timeout",
        "request_timeout",
        "num_retries",
        "fallbacks",
        "tags",
        "litellm_metadata",
        "extra_headers",
    }
)
# Numbers that mean the same as an int or a float (0 == 0.0).
_FLOAT_FIELDS = ("temperature", "top_p", "presence_penalty", "frequency_penalty", "repetition_penalty")


def canonical_request(body: Mapping[str, Any]) -> bytes:
    """The answer-relevant part of a request as canonical JSON bytes (keys sorted at every level)."""
    data = {k: v for k, v in body.items() if k not in IGNORED_FIELDS and v is not None}
    for f in _FLOAT_FIELDS:
        v = data.get(f)
        if isinstance(v, int) and not isinstance(v, bool):
            data[f] = float(v)
    if data.get("n") == 1:
        del data["n"]
    return orjson.dumps(data, option=orjson.OPT_SORT_KEYS)


def cache_key(body: Mapping[str, Any], scope: str, route: str = "chat") -> str:
    """A hex digest naming the entry for ``body`` within tenant ``scope`` on ``route``."""
    h = hashlib.sha256()
    h.update(route.encode())
    h.update(b"\0")
    h.update(scope.encode())
    h.update(b"\0")
    h.update(canonical_request(body))
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class CacheControl:
    """What the caller asked of the cache for this one request.

    Body (LiteLLM's): ``cache: {"no-cache": true, "no-store": true, "ttl": 60, "s-maxage": 10}``.
    Headers: ``Cache-Control: no-cache, no-store, max-age=N``. ``no-cache`` skips the lookup
    (the fresh answer is still stored), ``no-store`` skips storing, ``ttl`` sets how long this
    answer is kept, and ``s-maxage`` / ``max-age`` (HTTP request semantics) accept a cached
    answer only if it is at most that many seconds old.
    """

    no_cache: bool = False
    no_store: bool = False
    ttl: float | None = None
    max_age: float | None = None


def _num(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float) and v >= 0:
        return float(v)
    if isinstance(v, str):
        try:
            f = float(v)
        except ValueError:
            return None
        return f if f >= 0 else None
    return None


def parse_cache_control(body: Mapping[str, Any], header: str | None) -> CacheControl:
    no_cache = no_store = False
    ttl: float | None = None
    max_age: float | None = None
    if header:
        for part in header.split(","):
            name, _, value = part.strip().partition("=")
            name = name.strip().lower()
            if name == "no-cache":
                no_cache = True
            elif name == "no-store":
                no_store = True
            elif name in ("max-age", "s-maxage"):
                max_age = _num(value.strip().strip('"'))
    opts = body.get("cache")
    if isinstance(opts, Mapping):
        no_cache = no_cache or bool(opts.get("no-cache") or opts.get("no_cache"))
        no_store = no_store or bool(opts.get("no-store") or opts.get("no_store"))
        if opts.get("ttl") is not None:
            ttl = _num(opts.get("ttl"))
        age = opts.get("s-maxage", opts.get("s_maxage"))
        if age is not None:
            max_age = _num(age)
    return CacheControl(no_cache, no_store, ttl, max_age)
