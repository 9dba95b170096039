"""The control plane's asyncpg pool behind a ``DatabaseCircuit``.

Every use goes through ``acquire`` (the query helpers too), so one place turns an outage into
``DatabaseUnavailable`` (a clean 503 for admin routes and unknown keys, a quiet retry for the spend
writer) and keeps the circuit's state current. Any other error passes through unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from gateway.db.outage import DatabaseCircuit, DatabaseUnavailable, is_unreachable
from gateway.metrics import POSTGRES_ERRORS, POSTGRES_SECONDS

log = logging.getLogger(__name__)

_CIRCUIT_OPEN = POSTGRES_ERRORS.labels("circuit_open")
_QUERY_ERRORS = POSTGRES_ERRORS.labels("query")
_UNREACHABLE = POSTGRES_ERRORS.labels("unreachable")


class GuardedPool:
    """``acquire``/``fetch``/``fetchrow``/``fetchval``/``execute`` of an asyncpg pool, outage-aware."""

    def __init__(self, pool: asyncpg.Pool, circuit: DatabaseCircuit | None = None) -> None:
        self.raw = pool
        self.circuit = circuit or DatabaseCircuit()

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[asyncpg.Connection]:
        if not self.circuit.allow():
            _CIRCUIT_OPEN.inc()
            raise DatabaseUnavailable()
        started = time.monotonic()
        try:
            async with self.raw.acquire() as conn:
                yield conn
        except DatabaseUnavailable:
            raise
        except Exception as exc:
            POSTGRES_SECONDS.observe(time.monotonic() - started)
            if not is_unreachable(exc):
                if isinstance(exc, asyncpg.PostgresError):
                    _QUERY_ERRORS.inc()  # not the caller's own exceptions raised inside the block
                self.circuit.succeeded()  # the server answered (with an error of the query's own)
                raise
            _UNREACHABLE.inc()
            self.circuit.failed(exc)
            raise DatabaseUnavailable() from None
        POSTGRES_SECONDS.observe(time.monotonic() - started)
        self.circuit.succeeded()

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        async with self.acquire() as conn:
            return await conn.fetch(query, *args)

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        async with self.acquire() as conn:
            return await conn.fetchrow(query, *args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        async with self.acquire() as conn:
            return await conn.fetchval(query, *args)

    async def execute(self, query: str, *args: Any) -> str:
        async with self.acquire() as conn:
            return await conn.execute(query, *args)

    async def reachable(self, *, probe_timeout_s: float, max_age_s: float = 1.0) -> bool:
        """Is the database usable? Asks it (``SELECT 1``) unless it answered within ``max_age_s``."""
        if self.circuit.reachable and time.monotonic() - self.circuit.last_ok < max_age_s:
            return True
        try:
            await asyncio.wait_for(self.fetchval("SELECT 1"), probe_timeout_s)
        except DatabaseUnavailable:
            return False
        except TimeoutError as exc:
            self.circuit.failed(exc)
            return False
        return True

    async def close(self, grace_s: float = 5.0) -> None:
        """Close the connections; ones a dead server never answers are dropped after ``grace_s``."""
        try:
            await asyncio.wait_for(self.raw.close(), grace_s)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("closing the database pool: %s; terminating its connections", exc)
            self.raw.terminate()
