"""Redis and Postgres latency and errors on ``/metrics``.

The store clients are driven directly against the real servers (a real Redis, the test Postgres and
a port where nothing listens) and read back from prometheus-client's registry; a real gateway with
a virtual key, Redis limits and cache then shows both stores' histograms on its page.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator

import asyncpg
import httpx
import pytest
from prometheus_client import REGISTRY

from gateway.db.guarded_pool import GuardedPool
from gateway.db.outage import DatabaseUnavailable
from gateway.redis_pool import RedisPool
from tests.support.fake_openai import FakeOpenAI
from tests.support.gateway_app import gateway_config, keyed_gateway, new_key, own_database
from tests.support.gateway_process import GatewayProcess, free_port
from tests.support.redis_server import redis_url

__all__ = ["redis_url"]  # the session fixture


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    with own_database("switchyard_store_metrics") as url:
        yield url


def test_redis_round_trips_are_timed_per_client(redis_url: str) -> None:
    async def run() -> None:
        pool = RedisPool(redis_url)
        try:
            # Four commands queued in one loop turn: one pipelined round trip.
            await asyncio.gather(*(pool.execute("test", "PING") for _ in range(4)))
            await pool.call("test", lambda client: client.ping())
        finally:
            await pool.close()

    pipelined = value("switchyard_redis_roundtrip_seconds_count", client="pipelined")
    pooled = value("switchyard_redis_roundtrip_seconds_count", client="pool")
    asyncio.run(run())
    assert value("switchyard_redis_roundtrip_seconds_count", client="pipelined") == pipelined + 1
    assert value("switchyard_redis_roundtrip_seconds_count", client="pool") == pooled + 1


def test_postgres_operations_and_errors_by_kind(database_url: str) -> None:
    async def run() -> None:
        pool = GuardedPool(await asyncpg.create_pool(database_url, min_size=1, max_size=2))
        try:
            assert await pool.fetchval("SELECT 1") == 1
            with pytest.raises(asyncpg.UndefinedTableError):
                await pool.fetch("SELECT * FROM no_such_table")
            with pytest.raises(ValueError):
                async with pool.acquire():
                    raise ValueError("the caller's own error, not the database's")
        finally:
            await pool.close()
        dead = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
        down = GuardedPool(await asyncpg.create_pool(dead, min_size=0, max_size=1))
        try:
            for _ in range(2):  # the first fails to connect and opens the circuit; the second is not tried
                with pytest.raises(DatabaseUnavailable):
                    await down.fetchval("SELECT 1")
        finally:
            await down.close()

    before = {
        k: value("switchyard_postgres_errors_total", kind=k) for k in ("query", "unreachable", "circuit_open")
    }
    ops = value("switchyard_postgres_operation_seconds_count")
    asyncio.run(run())
    assert value("switchyard_postgres_operation_seconds_count") == ops + 4  # the refused one is not timed
    assert value("switchyard_postgres_errors_total", kind="query") == before["query"] + 1
    assert value("switchyard_postgres_errors_total", kind="unreachable") == before["unreachable"] + 1
    assert value("switchyard_postgres_errors_total", kind="circuit_open") == before["circuit_open"] + 1


def count(page: str, name: str, **labels: str) -> float:
    for line in page.splitlines():
        match = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
        if (
            match
            and match.group(1) == name
            and dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or "")) == labels
        ):
            return float(match.group(3))
    return 0.0


def test_a_gateway_page_shows_both_stores(database_url: str, redis_url: str) -> None:
    with (
        FakeOpenAI() as fake,
        keyed_gateway(gateway_config(fake.base_url, redis_url=redis_url), database_url) as gw,
    ):
        gateway: GatewayProcess = gw
        key = new_key(gateway)["key"]
        for _ in range(3):
            reply = httpx.post(
                gateway.base_url + "/v1/chat/completions",
                json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
                headers={"Authorization": f"Bearer {key}"},
                timeout=30,
            )
            assert reply.status_code == 200
        page = httpx.get(gateway.base_url + "/metrics").text
    assert count(page, "switchyard_redis_roundtrip_seconds_count", client="pipelined") >= 3  # limits
    assert count(page, "switchyard_postgres_operation_seconds_count") >= 2  # key lookup, key creation
    assert count(page, "switchyard_postgres_errors_total", kind="unreachable") == 0
