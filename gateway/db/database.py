"""The control plane's connection pool: a real server from ``DATABASE_URL`` or the embedded one."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from gateway.db.embedded import EmbeddedPostgres
from gateway.db.migrations import MigrationError, apply_migrations

log = logging.getLogger(__name__)


async def configure_connection(conn: asyncpg.Connection) -> None:
    """Per-connection setup for pools that read and write the control plane's tables."""
    # JSON columns travel as Python objects at the edge of the data layer.
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


@dataclass
class Database:
    """An asyncpg pool plus, when no URL was given, the embedded server behind it."""

    pool: asyncpg.Pool
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
    min_size: int = 1,
    max_size: int = 10,
) -> Database:
    """Connect (starting the embedded server when ``url`` is empty) and apply pending migrations."""
    embedded = None
    if not url:
        embedded = EmbeddedPostgres(Path(data_dir))
        url = await asyncio.to_thread(embedded.start)
    try:
        if migrate:
            conn = await asyncpg.connect(url)
            try:
                applied = await apply_migrations(conn, migrations_dir)
            except MigrationError as exc:
                log.error("refusing to start: %s", exc)
                raise
            finally:
                await conn.close()
            if applied:
                log.info("applied %d migration(s): %s", len(applied), ", ".join(applied))
        pool = await asyncpg.create_pool(url, min_size=min_size, max_size=max_size, init=configure_connection)
    except BaseException:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
        raise
    return Database(pool=pool, url=url, embedded=embedded)
