"""Fixtures for the control plane tests: one real Postgres database per session, migrated."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import pytest
import pytest_asyncio

from gateway.db import Database, open_database
from tests.support.fake_openai import FakeOpenAI
from tests.support.gateway_process import GatewayProcess, gateway_process
from tests.support.postgres import fresh_database, postgres_server


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

MASTER_KEY = "sk-master-control-plane-test"
# What the fake upstream reports per request (7 prompt + 3 completion tokens) at the configured prices.
INPUT_COST, OUTPUT_COST = 1e-6, 2e-6
UNIT_COST = Decimal("0.000013")


def gateway_config(fake_base_url: str) -> dict[str, Any]:
    params = {"api_base": fake_base_url, "api_key": "sk-upstream-fake"}
    return {
        "model_list": [
            {
                "model_name": "gpt-4o-mini",
                "litellm_params": {
                    "model": "openai/gpt-4o-mini",
                    **params,
                    "input_cost_per_token": INPUT_COST,
                    "output_cost_per_token": OUTPUT_COST,
                },
            },
            {
                "model_name": "gpt-4o",
                "litellm_params": {
                    "model": "openai/gpt-4o",
                    **params,
                    "input_cost_per_token": INPUT_COST,
                    "output_cost_per_token": OUTPUT_COST,
                },
            },
        ],
        "general_settings": {"master_key": MASTER_KEY, "spend_flush_interval_s": 0.1},
    }


@pytest.fixture(scope="module")
def fake_upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture(scope="module")
def gateway(fake_upstream: FakeOpenAI, database_url: str) -> Iterator[GatewayProcess]:
    with gateway_process(gateway_config(fake_upstream.base_url), env={"DATABASE_URL": database_url}) as gw:
        yield gw
