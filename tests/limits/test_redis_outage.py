"""Limits across a Redis outage, with three real gateway processes sharing a private Redis.

A virtual key with a small RPM is used through all three instances, then Redis is stopped and
the instances are hammered. ``redis_failure_mode: divide`` keeps the total admitted within the
key's limit (each instance admits its share, limit / 3, counting what it admitted before the
outage); the default ``open`` lets each instance admit the full limit, so the total exceeds it.
Then Redis starts again, every instance serves through it again, and once the instances have
stopped (flushing spend) the key's spend rows are exactly the responses answered 200.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import asyncpg
import httpx
import pytest

from tests.support.fake_openai import FakeOpenAI
from tests.support.gateway_process import GatewayProcess, gateway_process
from tests.support.limits_cache_gateways import MASTER_KEY, gateway_config
from tests.support.postgres import fresh_database, postgres_server
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.asyncio(loop_scope="session")

RPM = 30
INSTANCES = 3
BEFORE_PER_INSTANCE = 3  # admitted through Redis before it stops
MASTER = {"authorization": f"Bearer {MASTER_KEY}"}
LIVE = re.compile(r"^switchyard_limits_live_instances (\S+)$", re.M)


@dataclass
class Upstream:
    fake: FakeOpenAI
    database_url: str


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with ExitStack() as stack:
        server = stack.enter_context(postgres_server())
        database_url = stack.enter_context(fresh_database(server, "switchyard_outage"))
        fake = stack.enter_context(FakeOpenAI())
        yield Upstream(fake, database_url)


@dataclass
class Outcome:
    before: list[int]
    during: list[int]
    after: list[int]  # once Redis is back

    @property
    def admitted(self) -> int:
        return self.before.count(200) + self.during.count(200)


def _chat() -> dict[str, object]:
    # A unique prompt: no cache hit may stand in for an upstream call.
    return {"model": "gpt-rpm", "messages": [{"role": "user", "content": f"q {uuid.uuid4().hex}"}]}


async def _wait_live_count(gateways: list[GatewayProcess], client: httpx.AsyncClient) -> None:
    """Until every instance has seen all three in Redis (the count it will divide by)."""
    for _ in range(200):
        seen = []
        for gw in gateways:
            m = LIVE.search((await client.get(gw.base_url + "/metrics")).text)
            seen.append(float(m.group(1)) if m else 0.0)
        if seen == [INSTANCES] * INSTANCES:
            return
        await asyncio.sleep(0.1)
    pytest.fail(f"instances never saw each other: {seen}\n" + gateways[0].logs())


async def _success_rows(database_url: str, key_hash: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        query = "SELECT count(*) FROM spend_logs WHERE key_hash = $1 AND status = 'success'"
        return int(await conn.fetchval(query, key_hash))
    finally:
        await conn.close()


async def _run_outage(upstream: Upstream, redis: RedisServer, mode: str) -> Outcome:
    config = gateway_config(
        upstream.fake,
        redis.url,
        f"outage-{mode}-{uuid.uuid4().hex[:8]}",
        upstream.database_url,
        redis_failure_mode=mode,
        # Refused connections fail fast; a short timeout keeps a lost reply from stalling the run.
        redis_timeout_s=0.5,
    )
    # Counted live for 3 s after a beat: a busy box delaying one beat does not change the count.
    config["limit_settings"]["instance_heartbeat_seconds"] = 1.0
    with ExitStack() as stack:
        # One after another: the first one migrates the database.
        gateways = [stack.enter_context(gateway_process(config)) for _ in range(INSTANCES)]
        async with httpx.AsyncClient(timeout=30) as client:
            r = await client.post(
                gateways[0].base_url + "/key/generate", json={"rpm_limit": RPM}, headers=MASTER
            )
            assert r.status_code == 200, r.text
            auth = {"authorization": f"Bearer {r.json()['key']}"}
            key_hash = r.json()["token"]
            if mode == "divide":
                await _wait_live_count(gateways, client)

            async def send(i: int) -> int:
                gw = gateways[i % INSTANCES]
                resp = await client.post(gw.base_url + "/v1/chat/completions", json=_chat(), headers=auth)
                if resp.status_code == 429:
                    assert resp.json()["error"]["code"] == "rate_limit_exceeded", resp.text
                return resp.status_code

            before = [await send(i) for i in range(BEFORE_PER_INSTANCE * INSTANCES)]
            assert before == [200] * len(before), before
            redis.stop()
            # Three times the limit, round-robin over the instances, 10 at a time.
            gate = asyncio.Semaphore(10)

            async def limited(i: int) -> int:
                async with gate:
                    return await send(i)

            during = await asyncio.gather(*(limited(i) for i in range(RPM * 3)))
            assert set(during) <= {200, 429}, during
            for gw in gateways:
                assert (await client.get(gw.base_url + "/health/liveliness")).status_code == 200
            redis.start()  # empty: the window starts afresh
            # Each instance's circuit re-probes Redis; until it does, the instance's own share (spent
            # in the outage) refuses with 429. Then Redis admits again.
            after: list[int] = []
            for i in range(INSTANCES):
                for _ in range(150):
                    after.append(await send(i))
                    if after[-1] == 200:
                        break
                    await asyncio.sleep(0.2)
                assert after[-1] == 200, (i, after, gateways[i].logs()[-2000:])
    # The instances have stopped (SIGTERM flushes spend): one success row per 200, no more, no less.
    served = [*before, *during, *after].count(200)
    assert await _success_rows(upstream.database_url, key_hash) == served
    return Outcome(before, list(during), after)


async def test_divide_mode_keeps_the_total_within_the_limit(
    upstream: Upstream, own_redis: RedisServer
) -> None:
    out = await _run_outage(upstream, own_redis, "divide")
    # Balanced traffic, 30 // 3 = 10 per instance of which 3 were used before the outage: exact.
    assert out.admitted <= RPM, (out.admitted, out.during)
    # ...and the instances still serve their share (the outage is not a total refusal).
    assert out.during.count(200) == RPM - BEFORE_PER_INSTANCE * INSTANCES, out.during


async def test_open_mode_lets_each_instance_admit_the_full_limit(
    upstream: Upstream, own_redis: RedisServer
) -> None:
    out = await _run_outage(upstream, own_redis, "open")
    # The default, documented behaviour: every instance enforces the whole limit on its own.
    assert out.admitted > RPM, (out.admitted, out.during)
    assert out.during.count(200) == RPM * 3, out.during


async def test_instance_count_is_kept_through_an_outage_and_drops_when_one_leaves(
    own_redis: RedisServer,
) -> None:
    from gateway.limits.instances import InstanceCount
    from gateway.redis_pool import RedisPool

    pool = RedisPool(own_redis.url, retry_interval=0.05)
    a = InstanceCount(pool, "instances-test", interval_s=0.2)
    b = InstanceCount(pool, "instances-test", interval_s=0.2)
    c = InstanceCount(pool, "instances-test", interval_s=0.2)
    try:
        for instance in (a, b, c):
            instance.start()
        for _ in range(100):
            if await a.beat() == 3:
                break
            await asyncio.sleep(0.05)
        assert a.count == 3
        await c.close()  # a graceful shutdown leaves the set at once
        assert await a.beat() == 2
        own_redis.stop()
        for _ in range(3):
            assert await a.beat() == 2  # the last count seen, while Redis cannot be asked
    finally:
        await a.close()
        await b.close()
        await pool.close()
