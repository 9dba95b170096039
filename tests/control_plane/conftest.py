"""Fixtures for the control plane tests: one real Postgres database per session, migrated."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from gateway.db import Database, open_database
from tests.support.fake_openai import FakeOpenAI
from tests.support.gateway_app import MASTER_KEY, UNIT_COST, gateway_config, keyed_gateway
from tests.support.gateway_process import GatewayProcess
from tests.support.postgres import fresh_database, postgres_server

# The shared gateway builder's names, re-exported: the control-plane tests import them from here.
__all__ = ["MASTER_KEY", "UNIT_COST", "gateway_config"]


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    with postgres_server() as url:
        yield url


@pytest.fixture(scope="session")
def database_url(pg_server_url: str) -> Iterator[str]:
    with fresh_database(pg_server_url) as url:
        yield url


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def db(database_url: str) -> AsyncIterator[Database]:
    database = await open_database(database_url, max_size=20)
    yield database
    await database.close()


# ---- a real gateway process against a fake OpenAI upstream -------------------------------------------


@pytest.fixture(scope="module")
def fake_upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture(scope="module")
def gateway(fake_upstream: FakeOpenAI, database_url: str) -> Iterator[GatewayProcess]:
    with keyed_gateway(gateway_config(fake_upstream.base_url), database_url) as gw:
        yield gw
