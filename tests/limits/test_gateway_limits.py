"""Limits through real gateway processes sharing one Redis, with the openai SDK and raw HTTP clients."""

from __future__ import annotations

import asyncio
import re

import httpx
import openai
import pytest

from tests.support.fake_openai import Behavior
from tests.support.gateway_process import gateway_process
from tests.support.limits_cache_gateways import EXACT_RPM, GatewayPair, gateway_config
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.asyncio(loop_scope="session")

RESET = re.compile(r"^(\d+ms|\d+(\.\d+)?s|\d+m\d+(\.\d+)?s)$")


def chat(model: str, text: str = "hello", **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


async def test_exactly_the_limit_is_admitted_across_two_instances(gateway_pair: GatewayPair) -> None:
    gw = gateway_pair
    clients = [httpx.AsyncClient(timeout=30) for _ in range(8)]
    try:

        async def fire(i: int) -> int:
            base = (gw.a if i % 2 else gw.b).base_url
            r = await clients[i % len(clients)].post(f"{base}/v1/chat/completions", json=chat("gpt-rpm"))
            return r.status_code

        statuses = await asyncio.gather(*(fire(i) for i in range(EXACT_RPM * 3)))
    finally:
        for c in clients:
            await c.aclose()
    assert statuses.count(200) == EXACT_RPM, statuses
    assert statuses.count(429) == EXACT_RPM * 2, statuses


async def test_refusal_is_openai_shaped_with_retry_after(gateway_pair: GatewayPair) -> None:
    client = openai.AsyncOpenAI(base_url=gateway_pair.a.base_url + "/v1", api_key="x", max_retries=0)
    await client.chat.completions.create(**chat("gpt-429"))  # type: ignore[call-overload]
    other = openai.AsyncOpenAI(base_url=gateway_pair.b.base_url + "/v1", api_key="x", max_retries=0)
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
    client = openai.AsyncOpenAI(base_url=gateway_pair.a.base_url + "/v1", api_key="x", max_retries=0)
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
    async with httpx.AsyncClient(timeout=30) as a, httpx.AsyncClient(timeout=30) as b:
        req = a.build_request(
            "POST", f"{gw.a.base_url}/v1/chat/completions", json=chat("gpt-par", stream=True)
        )
        resp = await a.send(req, stream=True)
        assert resp.status_code == 200
        await resp.aiter_bytes().__anext__()  # the stream is live: the slot is held
        # The other instance sees the held slot (shared through Redis).
        busy = await b.post(f"{gw.b.base_url}/v1/chat/completions", json=chat("gpt-par"))
        assert busy.status_code == 429
        assert "parallel" in busy.json()["error"]["message"]
        await resp.aclose()  # the client goes away mid-stream
        for _ in range(100):
            if gw.fake.cancelled > cancelled_before:
                break
            await asyncio.sleep(0.05)
        assert gw.fake.cancelled > cancelled_before, "the upstream stream was not closed"
        gw.fake.set_behavior(Behavior(), model="gpt-par")
        for _ in range(100):
            again = await b.post(f"{gw.b.base_url}/v1/chat/completions", json=chat("gpt-par"))
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
    config = gateway_config(fake, own_redis.url, "outage", redis_failure_mode="open")
    with gateway_process(config) as gw:
        async with httpx.AsyncClient(base_url=gw.base_url, timeout=10) as client:
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
