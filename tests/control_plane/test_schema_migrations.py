"""Migrations: schema.prisma agrees with migrations/, Prisma-compatible bookkeeping, locking, checksums."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest

from gateway.db.migrations import MigrationError, apply_migrations, default_migrations_dir
from tests.support.gateway_process import free_port, run_switchyard
from tests.support.postgres import fresh_database

REPO = Path(__file__).resolve().parents[2]
PRISMA_TOOLS = REPO / "tools" / "prisma"
T = TypeVar("T")


def _node_ready() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: cannot run Prisma's schema engine (tools/prisma/migrate.mjs)")
    if not (PRISMA_TOOLS / "node_modules").is_dir():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--silent"], cwd=PRISMA_TOOLS, check=True, timeout=300
        )
    return node


def _migrate_mjs(command: str, url: str) -> subprocess.CompletedProcess[str]:
    node = _node_ready()
    return subprocess.run(
        [node, str(PRISMA_TOOLS / "migrate.mjs"), command],
        capture_output=True,
        text=True,
        env={**os.environ, "DATABASE_URL": url},
        timeout=120,
    )


@pytest.fixture
def empty_db(pg_server_url: str) -> Iterator[str]:
    with fresh_database(pg_server_url, prefix="switchyard_mig") as url:
        yield url


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def _apply(url: str, directory: Path | None = None) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        return await apply_migrations(conn, directory)
    finally:
        await conn.close()


async def _fetch(url: str, query: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetch(query)
    finally:
        await conn.close()


def test_schema_prisma_and_migrations_agree(pg_server_url: str) -> None:
    result = _migrate_mjs("check", pg_server_url)
    assert result.returncode == 0, (
        "schema.prisma and migrations/ disagree; run `node tools/prisma/migrate.mjs dev --name <change>`\n"
        f"{result.stdout}{result.stderr}"
    )


def test_gateway_records_migrations_like_prisma(empty_db: str) -> None:
    names = sorted(p.name for p in default_migrations_dir().iterdir() if p.is_dir())
    assert _run(_apply(empty_db)) == names
    rows = _run(_fetch(empty_db, 'SELECT * FROM "_prisma_migrations" ORDER BY migration_name'))
    for row, name in zip(rows, names, strict=True):
        script = (default_migrations_dir() / name / "migration.sql").read_bytes()
        assert row["migration_name"] == name
        assert row["checksum"] == hashlib.sha256(script).hexdigest()
        assert row["finished_at"] is not None and row["rolled_back_at"] is None
        assert row["applied_steps_count"] == 1 and len(row["id"]) == 36
    # Prisma's own engine reads the same table and finds nothing to do.
    deploy = _migrate_mjs("deploy", empty_db)
    assert deploy.returncode == 0 and "no pending migrations" in deploy.stdout, deploy.stdout + deploy.stderr
    assert _run(_apply(empty_db)) == []


def test_prisma_deploy_then_gateway_agrees(empty_db: str) -> None:
    deploy = _migrate_mjs("deploy", empty_db)
    assert deploy.returncode == 0 and "applied" in deploy.stdout, deploy.stdout + deploy.stderr
    assert _run(_apply(empty_db)) == []
    migrate = run_switchyard(["migrate"], env={"DATABASE_URL": empty_db})
    assert migrate.returncode == 0 and "no pending migrations" in migrate.stdout, migrate.stderr


def test_instances_starting_together_apply_once(empty_db: str) -> None:
    async def race() -> list[list[str]]:
        return await asyncio.gather(*(_apply(empty_db) for _ in range(6)))

    names = sorted(p.name for p in default_migrations_dir().iterdir() if p.is_dir())
    applied = [r for r in _run(race()) if r]
    assert applied == [names]  # one instance applied everything; the others waited, then found nothing
    count = _run(_fetch(empty_db, 'SELECT count(*) AS n FROM "_prisma_migrations"'))[0]["n"]
    assert count == len(names)


def test_edited_migration_refuses_to_start(empty_db: str, tmp_path: Path) -> None:
    edited = tmp_path / "migrations"
    shutil.copytree(default_migrations_dir(), edited)
    _run(_apply(empty_db, edited))
    first = sorted(p for p in edited.iterdir() if p.is_dir())[0]
    (first / "migration.sql").write_text((first / "migration.sql").read_text() + "\n-- edited\n")
    with pytest.raises(MigrationError, match="modified after it was applied"):
        _run(_apply(empty_db, edited))
    # The command line says so clearly and exits non-zero (the gateway's start does the same check).
    result = run_switchyard(
        ["migrate"], env={"DATABASE_URL": empty_db, "SWITCHYARD_MIGRATIONS_DIR": str(edited)}
    )
    assert result.returncode == 1
    assert "modified after it was applied" in result.stderr and "Traceback" not in result.stderr
    # `switchyard serve` refuses to start as well.
    served = run_switchyard(
        ["serve", "--port", str(free_port())],
        env={"DATABASE_URL": empty_db, "SWITCHYARD_MIGRATIONS_DIR": str(edited)},
        timeout=60,
    )
    assert served.returncode != 0
    assert "refusing to start: migration" in served.stdout + served.stderr


def test_a_failing_migration_applies_nothing(empty_db: str, tmp_path: Path) -> None:
    broken = tmp_path / "migrations"
    shutil.copytree(default_migrations_dir(), broken)
    (broken / "99999999999999_broken").mkdir()
    (broken / "99999999999999_broken" / "migration.sql").write_text("CREATE TABLE oops (;\n")
    with pytest.raises(MigrationError, match="99999999999999_broken failed"):
        _run(_apply(empty_db, broken))
    tables = _run(_fetch(empty_db, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))
    assert tables == []  # one transaction: the good migrations were rolled back too
