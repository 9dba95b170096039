"""The response cache against real Redis: keys, tenant scope, control, TTLs, streams, outages."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import orjson
import pytest

from gateway.cache import (
    LRU,
    CacheSettings,
    Entry,
    ResponseCacheService,
    StreamAssembler,
    cache_key,
    parse_cache_control,
    replay_sse,
)
from gateway.errors import GatewayError
from gateway.pipeline import Principal
from gateway.redis_pool import RedisPool

pytestmark = pytest.mark.asyncio(loop_scope="session")

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
COMPLETION = orjson.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello there! " * 12},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 36, "total_tokens": 39},
    }
)
TEAM_A = Principal("virtual", key_hash="ka", team_id="A")
TEAM_A2 = Principal("virtual", key_hash="ka2", team_id="A")
TEAM_B = Principal("virtual", key_hash="kb", team_id="B")

Factory = Callable[..., ResponseCacheService]


@pytest.fixture(params=["redis", "memory"])
async def make_cache(
    request: pytest.FixtureRequest, redis_url: str, redis_prefix: str
) -> AsyncIterator[Factory]:
    made: list[ResponseCacheService] = []
    pool = RedisPool(redis_url, socket_timeout=1.0, connect_timeout=1.0) if request.param == "redis" else None

    def factory(**settings: object) -> ResponseCacheService:
        s = CacheSettings(enabled=True, key_prefix=redis_prefix, **settings)  # type: ignore[arg-type]
        svc = ResponseCacheService(s, pool)
        made.append(svc)
        return svc

    yield factory
    for svc in made:
        await svc.close()
    if pool is not None:
        await pool.close()


async def test_key_ignores_fields_that_do_not_change_the_answer() -> None:
    base = cache_key(BODY, "team:A")
    same = {
        **BODY,
        "user": "u1",
        "stream": True,
        "stream_options": {"include_usage": True},
        "metadata": {"x": 1},
    }
    assert cache_key(same, "team:A") == base
    assert cache_key({**BODY, "temperature": 0.0}, "team:A") == base
    reordered = {"temperature": 0, "messages": BODY["messages"], "model": "m", "cache": {"ttl": 5}}
    assert cache_key(reordered, "team:A") == base
    for change in (
        {"model": "m2"},
        {"messages": [{"role": "user", "content": "hi!"}]},
        {"tools": [{"type": "function", "function": {"name": "f"}}]},
        {"tool_choice": "none"},
        {"seed": 1},
        {"n": 2},
        {"stop": ["x"]},
        {"logit_bias": {"1": 2}},
        {"response_format": {"type": "json_object"}},
        {"max_tokens": 5},
        {"top_p": 0.5},
    ):
        assert cache_key({**BODY, **change}, "team:A") != base, change
    assert cache_key(BODY, "team:B") != base


async def test_cache_control_from_body_and_headers() -> None:
    c = parse_cache_control({"cache": {"no-cache": True, "ttl": 60}}, None)
    assert c.no_cache and not c.no_store and c.ttl == 60
    c = parse_cache_control({}, "no-store, max-age=30")
    assert c.no_store and not c.no_cache and c.max_age == 30
    c = parse_cache_control({"cache": {"s-maxage": 5}}, "No-Cache")
    assert c.no_cache and c.max_age == 5


async def test_store_then_hit_from_another_instance(make_cache: Factory) -> None:
    writer = make_cache()
    plan = writer.plan(TEAM_A, BODY)
    assert await writer.lookup(plan) is None
    writer.store(plan, COMPLETION)
    await writer.drain()
    reader = make_cache() if writer.pool is not None else writer  # in-process: one instance only
    hit = await reader.lookup(reader.plan(TEAM_A2, {**BODY, "user": "someone"}))
    assert hit is not None
    assert hit.body == COMPLETION  # the stored bytes, untouched


async def test_no_hit_across_teams_unless_shared(make_cache: Factory) -> None:
    cache = make_cache()
    cache.store(cache.plan(TEAM_A, BODY), COMPLETION)
    await cache.drain()
    assert await cache.lookup(cache.plan(TEAM_B, BODY)) is None
    assert await cache.lookup(cache.plan(Principal("virtual", key_hash="lonely"), BODY)) is None
    shared = make_cache(shared=True)
    shared.store(shared.plan(TEAM_A, BODY), COMPLETION)
    await shared.drain()
    assert await shared.lookup(shared.plan(TEAM_B, BODY)) is not None


async def test_temperature_above_zero_is_cached_only_when_configured(make_cache: Factory) -> None:
    cache = make_cache()
    warm = {**BODY, "temperature": 0.7}
    assert cache.plan(TEAM_A, warm).key is None
    assert cache.plan(TEAM_A, {k: v for k, v in BODY.items() if k != "temperature"}).key is None
    cache.store(cache.plan(TEAM_A, warm), COMPLETION)
    await cache.drain()
    hot = make_cache(cache_nonzero_temperature=True)
    plan = hot.plan(TEAM_A, warm)
    assert plan.key is not None
    assert await hot.lookup(plan) is None  # nothing was stored by the first one
    hot.store(plan, COMPLETION)
    await hot.drain()
    assert await hot.lookup(plan) is not None


async def test_no_cache_no_store_ttl_and_max_age(make_cache: Factory) -> None:
    cache = make_cache()
    no_store = cache.plan(TEAM_A, {**BODY, "cache": {"no-store": True}})
    cache.store(no_store, COMPLETION)
    await cache.drain()
    assert await cache.lookup(cache.plan(TEAM_A, BODY)) is None
    cache.store(cache.plan(TEAM_A, BODY), COMPLETION)
    await cache.drain()
    assert await cache.lookup(cache.plan(TEAM_A, BODY, "no-cache")) is None
    assert await cache.lookup(cache.plan(TEAM_A, BODY)) is not None
    await asyncio.sleep(0.05)
    assert await cache.lookup(cache.plan(TEAM_A, BODY, "max-age=0")) is None
    short = {**BODY, "seed": 7, "cache": {"ttl": 0.2}}
    cache.store(cache.plan(TEAM_A, short), COMPLETION)
    await cache.drain()
    assert await cache.lookup(cache.plan(TEAM_A, short)) is not None
    await asyncio.sleep(0.3)
    assert await cache.lookup(cache.plan(TEAM_A, short)) is None


async def test_stream_assembles_and_replays_to_the_same_completion() -> None:
    sse = replay_sse(COMPLETION, include_usage=True)
    assert sse.endswith(b"data: [DONE]\n\n")
    events = [line[6:] for line in sse.split(b"\n\n") if line.startswith(b"data: {")]
    assert len(events) > 3  # really chunked
    asm = StreamAssembler()
    for e in events:
        assert orjson.loads(e)["object"] == "chat.completion.chunk"
        asm.feed(orjson.loads(e))
    assert asm.complete
    assert asm.completion() == orjson.loads(COMPLETION)


async def test_stream_with_tool_calls_round_trips() -> None:
    completion = {
        "id": "c2",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "f", "arguments": '{"a": 1}'},
                        }
                    ],
                },
                "logprobs": None,
                "finish_reason": "tool_calls",
            }
        ],
    }
    asm = StreamAssembler()
    for block in replay_sse(completion).split(b"\n\n"):
        if block.startswith(b"data: {"):
            asm.feed(orjson.loads(block[6:]))
    assert asm.completion() == completion


async def test_incomplete_stream_is_not_stored(make_cache: Factory) -> None:
    head = {"id": "x", "created": 1, "model": "m"}
    cache = make_cache()
    plan = cache.plan(TEAM_A, {**BODY, "stream": True})
    rec = cache.recorder(plan)
    assert rec is not None
    rec.feed_sse(
        b'data: {"id":"x","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
    )
    rec.finish()  # no finish_reason: the stream was cut off
    await cache.drain()
    assert await cache.lookup(plan) is None
    rec = cache.recorder(plan)
    assert rec is not None
    rec.feed_sse(
        b'data: {"id":"x","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
    )
    rec.feed_sse(
        b"data: " + orjson.dumps({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    )
    rec.finish()
    await cache.drain()
    hit = await cache.lookup(plan)
    assert hit is not None
    assert orjson.loads(hit.body)["choices"][0]["message"]["content"] == "Hi"


async def test_lru_is_bounded_and_expires() -> None:
    lru = LRU(max_entries=2, max_bytes=10)
    lru.put("a", Entry(b"12345", 0, 100))
    lru.put("b", Entry(b"12345", 0, 100))
    assert lru.get("a", now=1) is not None  # a is now the most recent
    lru.put("c", Entry(b"1", 0, 100))
    assert lru.get("b", now=1) is None and lru.get("a", now=1) is not None
    assert lru.bytes <= 10 and len(lru) <= 2
    assert lru.get("a", now=200) is None  # expired
    lru.put("big", Entry(b"x" * 11, 0, 100))
    assert lru.get("big", now=1) is None


async def test_redis_outage_is_a_miss_in_fail_open_and_503_in_fail_closed(
    own_redis, redis_prefix: str
) -> None:
    settings = CacheSettings(enabled=True, key_prefix=redis_prefix, local_lru_size=0)
    open_pool = RedisPool(own_redis.url, failure_mode="open", retry_interval=0.1)
    closed_pool = RedisPool(own_redis.url, failure_mode="closed", retry_interval=0.1)
    fail_open = ResponseCacheService(settings, open_pool)
    fail_closed = ResponseCacheService(settings, closed_pool)
    try:
        plan = fail_open.plan(TEAM_A, BODY)
        fail_open.store(plan, COMPLETION)
        await fail_open.drain()
        assert await fail_open.lookup(plan) is not None
        own_redis.stop()
        async with asyncio.timeout(10):
            assert await fail_open.lookup(plan) is None
            fail_open.store(plan, COMPLETION)  # silently skipped
            await fail_open.drain()
            with pytest.raises(GatewayError) as exc:
                await fail_closed.lookup(fail_closed.plan(TEAM_A, BODY))
            assert exc.value.status == 503
        own_redis.start()  # empty: no persistence
        for _ in range(100):
            await asyncio.sleep(0.05)
            fail_open.store(plan, COMPLETION)
            await fail_open.drain()
            if await fail_open.lookup(plan) is not None:
                break
        else:
            pytest.fail("the cache never recovered")
    finally:
        for svc in (fail_open, fail_closed):
            await svc.close()
        await open_pool.close()
        await closed_pool.close()
