"""The control plane's connection pool: a real server from ``DATABASE_URL`` or the embedded one."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import orjson

from gateway.db.embedded import EmbeddedPostgres
from gateway.db.guarded_pool import GuardedPool
from gateway.db.migrations import MigrationError, apply_migrations

log = logging.getLogger(__name__)


async def configure_connection(conn: asyncpg.Connection) -> None:
    """Per-connection setup for pools that read and write the control plane's tables."""
    # JSON columns travel as Python objects at the edge of the data layer. orjson, not the stdlib:
    # every spend row carries a JSON column, and the stdlib encoder was a visible per-row cost in
    # the spend writer's profile.
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, encoder=_dumps, decoder=orjson.loads, schema="pg_catalog")


def _dumps(value: object) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


@dataclass
class Database:
    """The outage-aware pool plus, when no URL was given, the embedded server behind it."""

    pool: GuardedPool
    url: str
    embedded: EmbeddedPostgres | None = None

    async def close(self) -> None:
        await self.pool.close()
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.stop)


async def open_database(
    url: str | None,
    data_dir: str | Path = ".switchyard",
    *,
    migrate: bool = True,
    migrations_dir: Path | None = None,
    min_size: int = 0,
    max_size: int = 10,
    connect_timeout: float = 5.0,
) -> Database:
    """Connect (starting the embedded server when ``url`` is empty) and apply pending migrations.

    ``min_size`` is 0 because asyncpg keeps a floor of connections by reconnecting in the background, and
    during an outage logs a full traceback for each failed try; connections stay open between uses anyway.
    ``connect_timeout`` bounds each new connection, so a database that stops answering (rather than
    refusing) is noticed as an outage within that time instead of asyncpg's default minute.
    """
    embedded = None
    if not url:
        embedded = EmbeddedPostgres(Path(data_dir))
        url = await asyncio.to_thread(embedded.start)
    try:
        if migrate:
            conn = await asyncpg.connect(url, timeout=connect_timeout)
            try:
                applied = await apply_migrations(conn, migrations_dir)
            except MigrationError as exc:
                log.error("refusing to start: %s", exc)
                raise
            finally:
                await conn.close()
            if applied:
                log.info("applied %d migration(s): %s", len(applied), ", ".join(applied))
        raw = await asyncpg.create_pool(
            url, min_size=min_size, max_size=max_size, init=configure_connection, timeout=connect_timeout
        )
    except BaseException:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
        raise
    return Database(pool=GuardedPool(raw), url=url, embedded=embedded)
