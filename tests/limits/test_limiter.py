"""The limiter against real Redis (and the in-process one): exactness, tokens, slots, scopes, headers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis

from gateway.errors import GatewayError
from gateway.limits import LimitSettings, MemoryLimiter, RateLimited, RedisLimiter, WindowLimiter
from gateway.limits.headers import format_reset
from gateway.limits.redis_limiter import scope_keys
from gateway.pipeline import LimitScope, Principal, Usage
from gateway.redis_pool import RedisPool

Factory = Callable[..., WindowLimiter]

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(params=["redis", "redis-cluster", "memory"])
async def make_limiter(
    request: pytest.FixtureRequest, redis_url: str, redis_prefix: str
) -> AsyncIterator[Factory]:
    made: list[WindowLimiter] = []
    pools: list[RedisPool] = []

    def factory(**settings: object) -> WindowLimiter:
        s = LimitSettings(key_prefix=redis_prefix, **settings)  # type: ignore[arg-type]
        if request.param == "memory":
            lim: WindowLimiter = MemoryLimiter(s)
        else:
            pool = RedisPool(redis_url, socket_timeout=1.0, connect_timeout=1.0)
            pools.append(pool)
            lim = RedisLimiter(s, pool=pool, cluster=request.param == "redis-cluster")
        made.append(lim)
        return lim

    yield factory
    for lim in made:
        await lim.close()
    for pool in pools:
        await pool.close()


def key(name: str = "k1", *limits: LimitScope, team: str | None = None) -> Principal:
    return Principal("virtual", key_hash=name, team_id=team, limits=limits)


async def admit_many(lim: WindowLimiter, principal: Principal, n: int, tokens: int = 0) -> tuple[list, list]:
    async def one() -> object:
        try:
            return await lim.admit(principal, "m", tokens)
        except RateLimited as exc:
            return exc

    results = await asyncio.gather(*(one() for _ in range(n)))
    ok = [r for r in results if not isinstance(r, RateLimited)]
    refused = [r for r in results if isinstance(r, RateLimited)]
    return ok, refused


async def test_rpm_admits_exactly_the_limit_under_concurrency(make_limiter: Factory) -> None:
    lim = make_limiter(key_rpm=7)
    ok, refused = await admit_many(lim, key(), 30)
    assert len(ok) == 7
    assert len(refused) == 23
    err = refused[0]
    assert err.status == 429
    assert err.code == "rate_limit_exceeded"
    assert err.type == "requests"
    assert int(err.headers["retry-after"]) >= 1
    assert err.headers["x-ratelimit-remaining-requests"] == "0"


async def test_two_limiters_on_one_redis_share_the_limit(redis_url: str, redis_prefix: str) -> None:
    pools = [RedisPool(redis_url, socket_timeout=1.0, connect_timeout=1.0) for _ in range(2)]
    lims = [RedisLimiter(LimitSettings(key_prefix=redis_prefix, rpm=9), pool=p) for p in pools]
    try:
        results = await asyncio.gather(*(admit_many(lims[i % 2], key(f"k{i}"), 5) for i in range(6)))
        assert sum(len(ok) for ok, _ in results) == 9
    finally:
        for lim in lims:
            await lim.close()
        for p in pools:
            await p.close()


async def test_headers_report_the_tightest_scope(make_limiter: Factory) -> None:
    lim = make_limiter(key_rpm=10, key_tpm=1000, rpm=100)
    team = LimitScope("team", "t1", rpm=3, tpm=5000)
    adm = await lim.admit(key("k1", team, team="t1"), "m", 100)
    h = adm.headers
    assert h["x-ratelimit-limit-requests"] == "3"
    assert h["x-ratelimit-remaining-requests"] == "2"
    assert h["x-ratelimit-limit-tokens"] == "1000"
    assert h["x-ratelimit-remaining-tokens"] == "900"
    assert h["x-ratelimit-reset-requests"].endswith("s")
    await adm.settle(Usage(10, 10))


async def test_tokens_reserved_then_settled_with_real_usage(make_limiter: Factory) -> None:
    lim = make_limiter(key_tpm=100)
    p = key()
    first = await lim.admit(p, "m", 60)
    with pytest.raises(RateLimited) as exc:
        await lim.admit(p, "m", 60)
    assert exc.value.type == "tokens"
    await first.settle(Usage(5, 5))  # real usage 10, not 60
    await lim.drain()
    second = await lim.admit(p, "m", 60)
    assert second.headers["x-ratelimit-remaining-tokens"] == "30"
    await second.settle(None)


async def test_request_larger_than_tpm_is_refused(make_limiter: Factory) -> None:
    lim = make_limiter(key_tpm=50)
    with pytest.raises(RateLimited) as exc:
        await lim.admit(key(), "m", 51)
    assert "larger than the limit" in exc.value.message


async def test_parallel_slots_are_released_on_settle(make_limiter: Factory) -> None:
    lim = make_limiter(key_max_parallel_requests=2)
    p = key()
    a = await lim.admit(p, "m", 0)
    b = await lim.admit(p, "m", 0)
    with pytest.raises(RateLimited):
        await lim.admit(p, "m", 0)
    await a.settle(None)
    await a.settle(None)  # idempotent: the second settle frees nothing more
    await lim.drain()
    c = await lim.admit(p, "m", 0)
    with pytest.raises(RateLimited):
        await lim.admit(p, "m", 0)
    await b.settle(None)
    await c.settle(None)


async def test_all_or_nothing_across_scopes(make_limiter: Factory) -> None:
    lim = make_limiter(key_rpm=10)
    team = LimitScope("team", "t-aon", rpm=1)
    p = key("k-aon", team, team="t-aon")
    await lim.admit(p, "m", 0)
    for _ in range(3):
        with pytest.raises(RateLimited) as exc:
            await lim.admit(p, "m", 0)
        assert "team t-aon" in exc.value.message
    await lim.drain()
    # The refused requests were rolled back in the key scope: only one is counted there.
    other = await lim.admit(key("k-aon"), "m", 0)
    assert other.headers["x-ratelimit-remaining-requests"] == "8"


async def test_model_scopes_apply_only_to_their_model(make_limiter: Factory) -> None:
    lim = make_limiter()
    p = key("k-m", LimitScope("key_model", "k-m:gpt-x", rpm=1))
    await lim.admit(p, "gpt-x", 0)
    with pytest.raises(RateLimited) as exc:
        await lim.admit(p, "gpt-x", 0)
    assert "model gpt-x" in exc.value.message
    for _ in range(3):
        adm = await lim.admit(p, "other", 0)
        assert adm.headers == {}


async def test_no_limits_costs_nothing(make_limiter: Factory) -> None:
    lim = make_limiter()
    adm = await lim.admit(key(), "m", 10)
    assert adm.headers == {}
    await adm.settle(None)


async def test_dead_process_leases_expire(redis_url: str, redis_prefix: str) -> None:
    settings = LimitSettings(key_prefix=redis_prefix, key_max_parallel_requests=1, lease_ttl_seconds=0.3)
    pool = RedisPool(redis_url, socket_timeout=1.0, connect_timeout=1.0)
    dying = RedisLimiter(settings, pool=pool)
    survivor = RedisLimiter(settings, pool=pool)
    try:
        await dying.admit(key("k-dead"), "m", 0)
        await dying.close()  # "dies": stops renewing and never settles
        with pytest.raises(RateLimited):
            await survivor.admit(key("k-dead"), "m", 0)
        for _ in range(100):
            await asyncio.sleep(0.05)
            try:
                adm = await survivor.admit(key("k-dead"), "m", 0)
                break
            except RateLimited:
                continue
        else:
            pytest.fail("the dead process's slot never expired")
        await adm.settle(None)
    finally:
        await survivor.close()
        await pool.close()


async def test_live_leases_are_renewed(redis_url: str, redis_prefix: str) -> None:
    settings = LimitSettings(key_prefix=redis_prefix, key_max_parallel_requests=1, lease_ttl_seconds=0.3)
    pool = RedisPool(redis_url, socket_timeout=1.0, connect_timeout=1.0)
    lim = RedisLimiter(settings, pool=pool)
    try:
        held = await lim.admit(key("k-live"), "m", 0)
        await asyncio.sleep(1.0)  # > 3 lease lifetimes: only renewal keeps it
        with pytest.raises(RateLimited):
            await lim.admit(key("k-live"), "m", 0)
        await held.settle(None)
    finally:
        await lim.close()
        await pool.close()


async def test_cluster_friendly_key_layout(redis_url: str, redis_prefix: str) -> None:
    w, p = scope_keys("sy", LimitScope("key", "abc"))
    assert w == "sy:{key:abc}:w" and p == "sy:{key:abc}:p"
    long_w, _ = scope_keys("sy", LimitScope("team_model", "t:" + "x" * 200))
    assert len(long_w) < 60
    client = aioredis.Redis.from_url(redis_url)
    try:
        lim = RedisLimiter(LimitSettings(key_prefix=redis_prefix, key_rpm=5), pool=RedisPool(redis_url))
        await lim.admit(key("k-layout"), "m", 3)
        keys = await client.keys(f"{redis_prefix}:*")
        assert keys == [f"{redis_prefix}:{{key:k-layout}}:w".encode()]
        assert 0 < await client.pttl(keys[0]) <= 61_000
        await lim.close()
        await lim.pool.close()  # type: ignore[union-attr]
    finally:
        await client.aclose()


async def test_reset_format_matches_openai() -> None:
    assert format_reset(20) == "20ms"
    assert format_reset(1000) == "1s"
    assert format_reset(1500) == "1.5s"
    assert format_reset(360_000) == "6m0s"
    assert format_reset(61_250) == "1m1.25s"


async def test_fail_open_serves_without_redis_and_recovers(own_redis, redis_prefix: str) -> None:
    pool = RedisPool(own_redis.url, failure_mode="open", retry_interval=0.1)
    lim = RedisLimiter(LimitSettings(key_prefix=redis_prefix, key_rpm=100), pool=pool)
    client = aioredis.Redis.from_url(own_redis.url)
    try:
        await lim.admit(key("k-out"), "m", 0)
        own_redis.stop()
        async with asyncio.timeout(10):  # a hang fails the test instead of blocking it
            for _ in range(5):
                adm = await lim.admit(key("k-out"), "m", 0)  # served by the in-process fallback
                await adm.settle(None)
        assert not pool.available or pool.circuit.is_open
        own_redis.start()
        for _ in range(100):
            await asyncio.sleep(0.05)
            await lim.admit(key("k-out"), "m", 0)
            if not pool.circuit.is_open:
                break
        else:
            pytest.fail("the circuit never closed again")
        await lim.admit(key("k-out"), "m", 0)
        # Shared counting resumed: the new server sees the admissions made after recovery.
        window = await client.hgetall(f"{redis_prefix}:{{key:k-out}}:w")
        assert sum(int(v) for f, v in window.items() if f.startswith(b"r")) >= 1
    finally:
        await client.aclose()
        await lim.close()
        await pool.close()


async def test_fail_closed_answers_503_without_hanging(own_redis, redis_prefix: str) -> None:
    pool = RedisPool(own_redis.url, failure_mode="closed", retry_interval=0.1)
    lim = RedisLimiter(LimitSettings(key_prefix=redis_prefix, key_rpm=100), pool=pool)
    try:
        await lim.admit(key("k-closed"), "m", 0)
        own_redis.stop()
        async with asyncio.timeout(10):
            for _ in range(3):
                with pytest.raises(GatewayError) as exc:
                    await lim.admit(key("k-closed"), "m", 0)
                assert exc.value.status == 503
                assert exc.value.code == "redis_unavailable"
    finally:
        await lim.close()
        await pool.close()


async def test_an_instant_admission_counts_and_is_checked_but_holds_nothing(make_limiter: Factory) -> None:
    # What a cache hit gets: limits apply to it, but it spends no tokens and is over at once.
    lim = make_limiter(key_rpm=4, key_tpm=100, key_max_parallel_requests=2)
    p = key()
    held = await lim.admit(p, "m", 60)
    hit = await lim.admit(p, "m", 500, instant=True)  # an estimate is ignored: nothing is reserved
    assert hit.headers["x-ratelimit-remaining-requests"] == "2"
    assert hit.headers["x-ratelimit-remaining-tokens"] == "40"
    await hit.settle(Usage())
    # It took no parallel slot: one more ordinary request still fits next to the held one...
    second = await lim.admit(p, "m", 10)
    # ...and with both slots taken, an instant admission is refused like any other.
    with pytest.raises(RateLimited) as full:
        await lim.admit(p, "m", 0, instant=True)
    assert "parallel" in full.value.message
    await held.settle(Usage(30, 30))
    await second.settle(Usage(5, 5))
    # It counted as a request: 3 of 4 admitted this minute, so one more, then RPM refuses.
    last = await lim.admit(p, "m", 0, instant=True)
    with pytest.raises(RateLimited) as over:
        await lim.admit(p, "m", 0, instant=True)
    assert over.value.type == "requests"
    await last.settle(Usage())


async def test_window_running_sums_match_the_buckets(redis_url: str, redis_prefix: str) -> None:
    """admit.lua keeps R/T (sums of the live buckets) and o (first non-empty second) beside the
    buckets: a hash written before the sums existed is summed once, seconds that leave the window
    are subtracted and deleted, and settles keep the sums in step with the buckets."""
    WINDOW = 3  # seconds: short, so the test can wait the window out
    client = aioredis.Redis.from_url(redis_url)
    pool = RedisPool(redis_url)
    lim = RedisLimiter(LimitSettings(key_prefix=redis_prefix, window_seconds=WINDOW), pool=pool)
    wkey = f"{redis_prefix}:{{key:k-sums}}:w"
    scope = LimitScope("key", "k-sums", rpm=100, tpm=100_000)
    principal = key("k-sums", scope)
    try:
        now = int((await client.time())[0])
        # Buckets only, as a gateway without running sums left them: one live second, one stale.
        await client.hset(wkey, mapping={f"r{now}": 3, f"t{now}": 30, f"r{now - 5}": 7, f"t{now - 5}": 70})
        await client.pexpire(wkey, (WINDOW + 1) * 1000)
        adm = await lim.admit(principal, "m", 10)
        assert adm.headers["x-ratelimit-remaining-requests"] == "96"  # 3 + this one of 100
        await adm.settle(Usage(4, 2))  # 6 real tokens instead of the 10 reserved
        await pool.barrier()

        async def check() -> dict[bytes, bytes]:
            h = await client.hgetall(wkey)
            t = int((await client.time())[0])
            live = {f: int(v) for f, v in h.items() if f[:1] in (b"r", b"t") and int(f[1:]) > t - WINDOW}
            assert not any(f[:1] in (b"r", b"t") and int(f[1:]) < t - WINDOW for f in h), h  # stale gone
            assert int(h[b"R"]) == sum(v for f, v in live.items() if f[:1] == b"r"), h
            assert int(h[b"T"]) == sum(v for f, v in live.items() if f[:1] == b"t"), h
            return h

        h = await check()
        assert f"r{now - 5}".encode() not in h
        await asyncio.sleep(WINDOW + 0.2)  # every earlier second leaves the window
        adm = await lim.admit(principal, "m", 5)
        assert adm.headers["x-ratelimit-remaining-requests"] == "99"
        await adm.settle(Usage(5, 0))
        await pool.barrier()
        h = await check()
        assert int(h[b"R"]) == 1 and int(h[b"T"]) == 5
    finally:
        await client.aclose()
        await lim.close()
        await pool.close()
