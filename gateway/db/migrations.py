"""Apply the committed Prisma migrations at start, recording them exactly as ``prisma migrate deploy`` does.

The gateway and Prisma must agree on what is applied, so this writes the same ``_prisma_migrations``
table (same columns, checksum = SHA-256 hex of ``migration.sql``) and takes the same advisory lock key
Prisma's schema engine uses, so instances starting together (and a concurrent ``prisma migrate
deploy``) serialise instead of racing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg

log = logging.getLogger(__name__)

# The advisory lock key of Prisma's schema engine (sql-schema-connector, postgres flavour).
PRISMA_ADVISORY_LOCK_KEY = 72707369

# Prisma's own DDL for its bookkeeping table.
_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS "_prisma_migrations" (
    "id"                    VARCHAR(36) PRIMARY KEY NOT NULL,
    "checksum"              VARCHAR(64) NOT NULL,
    "finished_at"           TIMESTAMPTZ,
    "migration_name"        VARCHAR(255) NOT NULL,
    "logs"                  TEXT,
    "rolled_back_at"        TIMESTAMPTZ,
    "started_at"            TIMESTAMPTZ NOT NULL DEFAULT now(),
    "applied_steps_count"   INTEGER NOT NULL DEFAULT 0
)
"""


class MigrationError(RuntimeError):
    """The database's migration history cannot be reconciled with the migrations on disk."""


@dataclass(frozen=True, slots=True)
class Migration:
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    def matches(self, checksum: str) -> bool:
        # Prisma accepts a script whose line endings were converted (git autocrlf) as unchanged.
        variants = {
            self.sql,
            self.sql.replace("\r\n", "\n"),
            self.sql.replace("\n", "\r\n").replace("\r\r", "\r"),
        }
        return any(hashlib.sha256(v.encode()).hexdigest() == checksum for v in variants)


def default_migrations_dir() -> Path:
    """``migrations/`` beside ``schema.prisma`` at the repo root; ``SWITCHYARD_MIGRATIONS_DIR`` overrides."""
    override = os.environ.get("SWITCHYARD_MIGRATIONS_DIR")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / "migrations"


def load_migrations(directory: Path) -> list[Migration]:
    """The migrations on disk, in the order Prisma applies them (directory name order)."""
    if not directory.is_dir():
        raise MigrationError(f"migrations directory not found: {directory}")
    found = []
    for entry in sorted(p for p in directory.iterdir() if p.is_dir()):
        script = entry / "migration.sql"
        if not script.is_file():
            raise MigrationError(f"{entry.name}: missing migration.sql")
        found.append(Migration(entry.name, script.read_bytes().decode()))
    return found


async def apply_migrations(conn: asyncpg.Connection, directory: Path | None = None) -> list[str]:
    """Apply every pending migration in one transaction under Prisma's advisory lock.

    Returns the names applied. Raises ``MigrationError`` (and applies nothing) when an applied
    migration was edited, a recorded one is missing on disk, or a previous attempt failed.
    """
    migrations = load_migrations(directory or default_migrations_dir())
    async with conn.transaction():
        # Transaction-scoped, so it is released even if this process dies mid-way.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", PRISMA_ADVISORY_LOCK_KEY)
        await conn.execute(_CREATE_TABLE)
        rows = await conn.fetch(
            'SELECT migration_name, checksum, finished_at, rolled_back_at FROM "_prisma_migrations" '
            "ORDER BY started_at"
        )
        applied: dict[str, str] = {}
        for row in rows:
            if row["rolled_back_at"] is not None:
                continue
            if row["finished_at"] is None:
                raise MigrationError(
                    f"migration {row['migration_name']} is recorded as failed in _prisma_migrations; "
                    "resolve it (prisma migrate resolve) before starting"
                )
            applied[row["migration_name"]] = row["checksum"]
        on_disk = {m.name: m for m in migrations}
        for name, checksum in applied.items():
            migration = on_disk.get(name)
            if migration is None:
                raise MigrationError(
                    f"migration {name} is applied in the database but missing from {directory}"
                )
            if not migration.matches(checksum):
                raise MigrationError(
                    f"migration {name} was modified after it was applied (checksum {checksum[:12]}... in the "
                    f"database, {migration.checksum[:12]}... on disk); refusing to start"
                )
        done = []
        for migration in migrations:
            if migration.name in applied:
                continue
            row_id = str(uuid.uuid4())
            await conn.execute(
                'INSERT INTO "_prisma_migrations" '
                "(id, checksum, migration_name, started_at, applied_steps_count) "
                "VALUES ($1, $2, $3, clock_timestamp(), 0)",
                row_id,
                migration.checksum,
                migration.name,
            )
            try:
                await conn.execute(migration.sql)
            except asyncpg.PostgresError as exc:
                raise MigrationError(f"migration {migration.name} failed: {exc}") from exc
            await conn.execute(
                'UPDATE "_prisma_migrations" SET finished_at = clock_timestamp(), applied_steps_count = 1 '
                "WHERE id = $1",
                row_id,
            )
            log.info("applied migration %s", migration.name)
            done.append(migration.name)
        return done
