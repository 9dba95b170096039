"""Scale-out: three ``switchyard serve`` processes on one Postgres and one Redis, under concurrent load
spread over all three, behave as one gateway.

- RPM exact: a key limited to N requests a minute gets exactly N answers, every other request a 429
  ``rate_limit_exceeded``, whichever instances they hit.
- TPM exact: each request here reserves exactly the tokens it then uses (the chat door estimates a
  28-character prompt with ``max_tokens`` 3 as 28 / 4 + 3 = 10; the fake upstream's usage is
  7 + 3 = 10), so a key with a TPM of T gets exactly T / 10 answers, however many run at once.
- Spend complete: every answer a client received is one success spend row of its key, with its
  tokens and its cost; refused requests are no spend.

Redis is a private server (nothing else writes to it) and Postgres a fresh database.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from decimal import Decimal

import httpx
import pytest

from tests.support.fake_openai import FakeOpenAI
from tests.support.gateway_app import UNIT_COST, gateway_config, new_key, own_database
from tests.support.gateway_process import GatewayProcess, gateway_process
from tests.support.redis_server import RedisServer
from tests.support.spend_rows import spend_rows

INSTANCES = 3
MODEL = "gpt-4o-mini"
PROMPT = "Count the tokens of this text."[:28]  # 28 characters: 7 estimated prompt tokens


@dataclass
class Cluster:
    gateways: list[GatewayProcess]
    database_url: str


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with ExitStack() as stack:
        database_url = stack.enter_context(own_database("switchyard_scale_out"))
        redis = RedisServer().start()
        stack.callback(redis.close)
        fake = stack.enter_context(FakeOpenAI())
        config = gateway_config(fake.base_url, models=[MODEL], redis_url=redis.url)
        config["general_settings"]["redis_timeout_s"] = 2.0  # a loaded box must not open the circuit
        env = {"DATABASE_URL": database_url}
        first = stack.enter_context(gateway_process(config, env=env))  # migrates the database first
        rest = [stack.enter_context(gateway_process(config, env=env)) for _ in range(INSTANCES - 1)]
        yield Cluster([first, *rest], database_url)


async def _load(gws: list[GatewayProcess], key: str, total: int, concurrency: int) -> list[httpx.Response]:
    """``total`` chat requests with ``key``, round-robin over the instances, ``concurrency`` at once."""
    targets = itertools.cycle(gws)
    gate = asyncio.Semaphore(concurrency)
    body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 3}

    async with httpx.AsyncClient(timeout=60, headers={"Authorization": f"Bearer {key}"}) as client:

        async def one(gw: GatewayProcess) -> httpx.Response:
            async with gate:
                return await client.post(gw.base_url + "/v1/chat/completions", json=body)

        return list(await asyncio.gather(*(one(next(targets)) for _ in range(total))))


def load(gws: list[GatewayProcess], key: str, total: int, concurrency: int = 24) -> list[httpx.Response]:
    return asyncio.run(_load(gws, key, total, concurrency))


def check_spend(cluster: Cluster, token: str, answered: list[httpx.Response]) -> None:
    rows = spend_rows(cluster.database_url, token, len(answered))
    assert [r["status"] for r in rows] == ["success"] * len(answered)
    received = sum(r.json()["usage"]["total_tokens"] for r in answered)
    assert sum(r["prompt_tokens"] + r["completion_tokens"] for r in rows) == received
    assert sum(Decimal(r["spend"]) for r in rows) == UNIT_COST * len(answered)


def test_rpm_is_exact_and_spend_complete_across_three_instances(cluster: Cluster) -> None:
    created = new_key(cluster.gateways[0], rpm_limit=30, tpm_limit=10**9)
    replies = load(cluster.gateways, created["key"], total=75)
    answered = [r for r in replies if r.status_code == 200]
    refused = [r for r in replies if r.status_code == 429]
    assert len(answered) == 30
    assert len(refused) == 45
    assert {r.json()["error"]["code"] for r in refused} == {"rate_limit_exceeded"}
    check_spend(cluster, created["token"], answered)


def test_tpm_is_exact_across_three_instances(cluster: Cluster) -> None:
    created = new_key(cluster.gateways[0], tpm_limit=200, rpm_limit=10**6)
    replies = load(cluster.gateways, created["key"], total=50)
    answered = [r for r in replies if r.status_code == 200]
    refused = [r for r in replies if r.status_code == 429]
    assert len(answered) == 20  # 200 tokens / 10 a request
    assert len(refused) == 30
    assert {r.json()["error"]["type"] for r in refused} == {"tokens"}
    check_spend(cluster, created["token"], answered)


def test_unlimited_load_every_answer_is_one_spend_row(cluster: Cluster) -> None:
    created = new_key(cluster.gateways[0], key_alias=f"load-{uuid.uuid4().hex[:6]}")
    replies = load(cluster.gateways, created["key"], total=300, concurrency=48)
    assert {r.status_code for r in replies} == {200}
    # Request ids start with a per-process prefix: all three instances served.
    assert len({r.headers["x-request-id"][:16] for r in replies}) == INSTANCES
    check_spend(cluster, created["token"], replies)
