"""Limits through real gateway processes sharing one Redis, with the openai SDK and raw HTTP clients."""

from __future__ import annotations

import asyncio
import re

import httpx
import openai
import pytest

from tests.support.fake_openai import Behavior
from tests.support.gateway_process import gateway_process
from tests.support.limits_cache_gateways import MASTER_KEY, GatewayPair, gateway_config
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.asyncio(loop_scope="session")

EXACT_RPM = 12
MASTER = {"authorization": f"Bearer {MASTER_KEY}"}
RESET = re.compile(r"^(\d+ms|\d+(\.\d+)?s|\d+m\d+(\.\d+)?s)$")


def chat(model: str, text: str = "hello", **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


async def test_exactly_the_limit_is_admitted_across_two_instances(gateway_pair: GatewayPair) -> None:
    """A virtual key with rpm_limit 12, used through both gateways by 8 clients at once."""
    gw = gateway_pair
    key = gw.new_key(rpm_limit=EXACT_RPM)
    auth = {"authorization": f"Bearer {key}"}
    clients = [httpx.AsyncClient(timeout=30) for _ in range(8)]
    try:

        async def fire(i: int) -> int:
            base = (gw.a if i % 2 else gw.b).base_url
            r = await clients[i % len(clients)].post(
                f"{base}/v1/chat/completions", json=chat("gpt-rpm"), headers=auth
            )
            if r.status_code == 429:
                assert "this key" in r.json()["error"]["message"]
            return r.status_code

        statuses = await asyncio.gather(*(fire(i) for i in range(EXACT_RPM * 3)))
    finally:
        for c in clients:
            await c.aclose()
    assert statuses.count(200) == EXACT_RPM, statuses
    assert statuses.count(429) == EXACT_RPM * 2, statuses


async def test_refusal_is_openai_shaped_with_retry_after(gateway_pair: GatewayPair) -> None:
    client = openai.AsyncOpenAI(base_url=gateway_pair.a.base_url + "/v1", api_key=MASTER_KEY, max_retries=0)
    await client.chat.completions.create(**chat("gpt-429"))  # type: ignore[call-overload]
    other = openai.AsyncOpenAI(base_url=gateway_pair.b.base_url + "/v1", api_key=MASTER_KEY, max_retries=0)
    with pytest.raises(openai.RateLimitError) as exc:
        await other.chat.completions.create(**chat("gpt-429"))  # type: ignore[call-overload]
    err = exc.value
    assert err.status_code == 429
    body = err.response.json()["error"]
    assert body["code"] == "rate_limit_exceeded"
    assert body["type"] == "requests"
    assert "model gpt-429" in body["message"]
    assert 1 <= int(err.response.headers["retry-after"]) <= 60
    assert err.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert err.response.headers["x-ratelimit-limit-requests"] == "1"
    await client.close()
    await other.close()


async def test_success_carries_openai_rate_limit_headers(gateway_pair: GatewayPair) -> None:
    client = openai.AsyncOpenAI(base_url=gateway_pair.a.base_url + "/v1", api_key=MASTER_KEY, max_retries=0)
    raw = await client.chat.completions.with_raw_response.create(**chat("gpt-hdr", max_tokens=50))  # type: ignore[call-overload]
    h = raw.headers
    assert h["x-ratelimit-limit-requests"] == "1000"
    assert 0 <= int(h["x-ratelimit-remaining-requests"]) < 1000
    assert h["x-ratelimit-limit-tokens"] == "100000"
    assert int(h["x-ratelimit-remaining-tokens"]) <= 100000 - 50
    assert RESET.match(h["x-ratelimit-reset-requests"]), h["x-ratelimit-reset-requests"]
    assert RESET.match(h["x-ratelimit-reset-tokens"]), h["x-ratelimit-reset-tokens"]
    raw.parse()
    await client.close()


async def test_parallel_slot_is_released_when_the_client_disconnects(gateway_pair: GatewayPair) -> None:
    gw = gateway_pair
    gw.fake.set_behavior(Behavior(chunks=400, chunk_delay_s=0.05), model="gpt-par")
    cancelled_before = gw.fake.cancelled
    async with (
        httpx.AsyncClient(timeout=30, headers=MASTER) as a,
        httpx.AsyncClient(timeout=30, headers=MASTER) as b,
    ):
        req = a.build_request(
            "POST", f"{gw.a.base_url}/v1/chat/completions", json=chat("gpt-par", stream=True)
        )
        resp = await a.send(req, stream=True)
        assert resp.status_code == 200
        chunks = resp.aiter_bytes()  # kept referenced: a collected iterator closes the response
        first = await chunks.__anext__()  # the stream is live: the slot is held
        assert first.startswith(b"data: {"), first
        # The other instance sees the held slot (shared through Redis).
        busy = await b.post(f"{gw.b.base_url}/v1/chat/completions", json=chat("gpt-par"))
        assert busy.status_code == 429, busy.text
        assert "parallel" in busy.json()["error"]["message"]
        await resp.aclose()  # the client goes away mid-stream
        for _ in range(100):
            if gw.fake.cancelled > cancelled_before:
                break
            await asyncio.sleep(0.05)
        assert gw.fake.cancelled > cancelled_before, "the upstream stream was not closed"
        gw.fake.set_behavior(Behavior(), model="gpt-par")
        for _ in range(100):
            again = await b.post(f"{gw.b.base_url}/v1/chat/completions", json=chat("gpt-par"), headers=MASTER)
            if again.status_code == 200:
                break
            await asyncio.sleep(0.05)
        assert again.status_code == 200, "the slot was never released"


async def test_redis_outage_fails_open_and_recovers(
    gateway_pair: GatewayPair, own_redis: RedisServer
) -> None:
    """A gateway on its own Redis: the Redis stops mid-run (requests keep being served, none hang),
    then starts again (shared limits resume)."""
    fake = gateway_pair.fake
    config = gateway_config(
        fake, own_redis.url, "outage", gateway_pair.database_url, redis_failure_mode="open"
    )
    with gateway_process(config) as gw:
        async with httpx.AsyncClient(base_url=gw.base_url, timeout=10, headers=MASTER) as client:
            ok = await client.post("/v1/chat/completions", json=chat("gpt-hdr"))
            assert ok.status_code == 200
            own_redis.stop()
            for i in range(6):
                # The client's 10 s timeout turns a hang into a failure.
                r = await client.post("/v1/chat/completions", json=chat("gpt-hdr", f"during outage {i}"))
                assert r.status_code == 200, r.text
            metrics = (await client.get("/metrics")).text
            assert re.search(r'switchyard_redis_errors_total\{component="limits"\} [1-9]', metrics), metrics
            own_redis.start()
            import redis.asyncio as aioredis

            probe = aioredis.Redis.from_url(own_redis.url)
            try:
                for _ in range(100):
                    r = await client.post("/v1/chat/completions", json=chat("gpt-hdr", "after"))
                    assert r.status_code == 200
                    if await probe.exists("outage:{model:gpt-hdr}:w"):
                        break
                    await asyncio.sleep(0.05)
                else:
                    pytest.fail("limits never went back to Redis:\n" + gw.logs())
            finally:
                await probe.aclose()


async def test_redis_outage_fails_closed_with_503_when_configured(
    gateway_pair: GatewayPair, own_redis: RedisServer
) -> None:
    config = gateway_config(
        gateway_pair.fake, own_redis.url, "closed", gateway_pair.database_url, redis_failure_mode="closed"
    )
    with gateway_process(config) as gw:
        async with httpx.AsyncClient(base_url=gw.base_url, timeout=10, headers=MASTER) as client:
            assert (await client.post("/v1/chat/completions", json=chat("gpt-hdr"))).status_code == 200
            own_redis.stop()
            for _ in range(3):
                r = await client.post("/v1/chat/completions", json=chat("gpt-hdr"))
                assert r.status_code == 503, r.text
                assert r.json()["error"]["code"] == "redis_unavailable"
                assert r.headers["retry-after"] == "1"
            # A request with no limit and nothing cacheable does not need Redis at all.
            assert (await client.post("/v1/chat/completions", json=chat("gpt-rpm"))).status_code == 200
            own_redis.start()
            for _ in range(100):
                r = await client.post("/v1/chat/completions", json=chat("gpt-hdr"))
                if r.status_code == 200:
                    break
                await asyncio.sleep(0.05)
            assert r.status_code == 200, "never recovered:\n" + gw.logs()
