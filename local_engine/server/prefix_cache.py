"""The engine server's prefix-cache routes, read by a prefix-aware router (the gateway's
``prefix-cache-aware`` strategy; see ``local_engine.prefix_summary``):

- ``GET /v1/prefix_cache/summary``: a Bloom filter of the block hashes in the prefix cache, the
  block size, the hash check, the tokenizer's fingerprint and the hit counters. The filter is
  rebuilt at most every ``REFRESH_S``, so any number of readers polling each second cost one
  build; the counters are read on every call.
- ``GET /v1/prefix_cache/tokenizer``: the tokenizer spec that fingerprint names (read once per
  fingerprint by each reader).

Both sit under ``/v1/`` so the server's ``--api-key`` guards them like the model routes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from local_engine.engine.async_engine import AsyncEngine
from local_engine.prefix_summary import summarize, tokenizer_fingerprint, tokenizer_spec
from local_engine.server.protocol import OpenAIError

REFRESH_S = 0.5


@dataclass
class _Published:
    spec: dict[str, Any] | None = None
    fingerprint: str = ""
    summary: dict[str, Any] | None = None
    built_at: float = 0.0


def add_prefix_cache_routes(app: FastAPI, engine: AsyncEngine) -> None:
    published = _Published()

    def spec() -> tuple[dict[str, Any], str]:
        if published.spec is None:
            # Once: serialising a large vocabulary takes milliseconds.
            published.spec = tokenizer_spec(engine.tokenizer)
            published.fingerprint = tokenizer_fingerprint(published.spec)
        return published.spec, published.fingerprint

    @app.get("/v1/prefix_cache/summary")
    async def prefix_cache_summary() -> JSONResponse:
        inner = engine.engine
        if inner is None:
            raise OpenAIError(503, "engine is not running", type="api_error")
        now = time.monotonic()
        if published.summary is None or now - published.built_at >= REFRESH_S:
            bm = inner.block_manager
            summary = summarize(
                bm.cached_hashes(),
                bm.num_blocks,
                bm.block_size,
                spec()[1],
                bm.prefix_cache_queries,
                bm.prefix_cache_hits,
            )
            published.summary, published.built_at = summary.to_json(), now
        bm = inner.block_manager
        # The counters are always current (operators and tests read them); only the filter waits.
        counters = {"queries": bm.prefix_cache_queries, "hits": bm.prefix_cache_hits}
        return JSONResponse({**published.summary, "prefix_cache": counters})

    @app.get("/v1/prefix_cache/tokenizer")
    async def prefix_cache_tokenizer() -> JSONResponse:
        if engine.engine is None:
            raise OpenAIError(503, "engine is not running", type="api_error")
        body, fingerprint = spec()
        return JSONResponse({"fingerprint": fingerprint, **body})
