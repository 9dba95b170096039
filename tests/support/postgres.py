"""A real PostgreSQL for tests: the server at 127.0.0.1:5432 when present (CI), else an embedded one.

Each test session gets its own database (``switchyard_test_<random>``), dropped at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg

LOCAL_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def _local_server_up() -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", 5432), timeout=0.5):
        return True
    return False


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """The admin URL (database ``postgres``) of a running server for this test session.

    ``SWITCHYARD_TEST_EMBEDDED_PG=1`` uses the embedded server even when 5432 answers.
    """
    if _local_server_up() and not os.environ.get("SWITCHYARD_TEST_EMBEDDED_PG"):
        yield LOCAL_URL
        return
    from gateway.db.embedded import EmbeddedPostgres

    with tempfile.TemporaryDirectory(prefix="switchyard-pg-") as tmp:
        server = EmbeddedPostgres(Path(tmp))
        url = server.start()
        try:
            yield url
        finally:
            server.stop()


def with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


async def _admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.contextmanager
def fresh_database(server_url: str, prefix: str = "switchyard_test") -> Iterator[str]:
    """A new empty database on ``server_url``; yields its URL and drops it afterwards."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    asyncio.run(_admin(server_url, f'CREATE DATABASE "{name}"'))
    try:
        yield with_database(server_url, name)
    finally:
        asyncio.run(_admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
