"""Cooldowns: local failure counting, Retry-After, and sharing through a real Redis."""

from __future__ import annotations

import asyncio
import time

from gateway.redis_pool import RedisPool
from gateway.routing.cooldowns import CooldownManager, CooldownSettings
from gateway.routing.model_group import ModelGroup, Unavailable
from gateway.routing.state import DeploymentState
from gateway.routing.strategies import make_strategy


def two() -> list[DeploymentState]:
    return [DeploymentState(id="a", model_name="m"), DeploymentState(id="b", model_name="m")]


async def test_allowed_fails_within_window_starts_cooldown() -> None:
    ds = two()
    cm = CooldownManager(ds, CooldownSettings(allowed_fails=3, allowed_fails_window_s=60, cooldown_time=30))
    assert not await cm.record_failure(ds[0])
    assert not await cm.record_failure(ds[0])
    assert ds[0].cooldown_until == 0.0
    assert await cm.record_failure(ds[0])
    assert ds[0].cooldown_until > time.time() + 29
    group = ModelGroup("m", ds)
    assert all(group.pick(make_strategy(None), time.time()) is ds[1] for _ in range(20))


async def test_failures_outside_the_window_do_not_add_up() -> None:
    ds = two()
    cm = CooldownManager(ds, CooldownSettings(allowed_fails=2, allowed_fails_window_s=0.15, cooldown_time=30))
    assert not await cm.record_failure(ds[0])
    await asyncio.sleep(0.25)
    assert not await cm.record_failure(ds[0])
    assert ds[0].cooldown_until == 0.0


async def test_retry_after_cools_down_for_that_long_and_then_returns() -> None:
    ds = two()
    cm = CooldownManager(ds, CooldownSettings(allowed_fails=5, cooldown_time=60))
    assert await cm.record_failure(ds[0], retry_after=0.3)
    now = time.time()
    assert now < ds[0].cooldown_until <= now + 0.31
    group = ModelGroup("m", ds)
    ds[1].cooldown_until = now + 0.2
    why = group.pick(make_strategy(None), now)
    assert isinstance(why, Unavailable) and why.retry_at == ds[1].cooldown_until
    await asyncio.sleep(0.35)
    assert isinstance(group.pick(make_strategy(None), time.time()), DeploymentState)


async def test_cooldown_is_shared_between_instances_through_redis(redis_url: str, namespace: str) -> None:
    settings = CooldownSettings(
        allowed_fails=2, allowed_fails_window_s=30, cooldown_time=0.6, refresh_interval_s=0.05
    )
    pool_a = RedisPool(redis_url, socket_timeout=0.5, connect_timeout=0.5)
    pool_b = RedisPool(redis_url, socket_timeout=0.5, connect_timeout=0.5)
    try:
        ds_a, ds_b = two(), two()
        a = CooldownManager(ds_a, settings, pool_a, namespace=namespace)
        b = CooldownManager(ds_b, settings, pool_b, namespace=namespace)
        # One failure seen by each instance: together they reach allowed_fails.
        assert not await a.record_failure(ds_a[0])
        assert await b.record_failure(ds_b[0])
        assert ds_b[0].cooldown_until > time.time()
        # Instance A learns about it on its next refresh, without failing itself.
        await asyncio.sleep(0.06)
        await a.refresh()
        assert ds_a[0].cooldown_until == ds_b[0].cooldown_until
        assert ds_a[1].cooldown_until == 0.0
        # A refresh right away is served from the local cache (no Redis round trip).
        ds_a[0].cooldown_until = 0.0
        await a.refresh()
        assert ds_a[0].cooldown_until == 0.0
        # And it ends: after the cooldown the shared set no longer lists it.
        await asyncio.sleep(0.7)
        await a.refresh()
        assert ds_a[0].cooldown_until <= time.time()
        group = ModelGroup("m", ds_a)
        assert isinstance(group.pick(make_strategy(None), time.time()), DeploymentState)
    finally:
        await pool_a.close()
        await pool_b.close()


async def test_redis_outage_fails_open_to_local_state() -> None:
    # Nothing listens on this port: every Redis call fails fast, counting stays local.
    pool = RedisPool("redis://127.0.0.1:1/0", socket_timeout=0.05, connect_timeout=0.05)
    try:
        ds = two()
        cm = CooldownManager(ds, CooldownSettings(allowed_fails=2, cooldown_time=10), pool)
        assert not await cm.record_failure(ds[0])
        assert await cm.record_failure(ds[0])
        await cm.refresh()
        assert ds[0].cooldown_until > time.time()
    finally:
        await pool.close()
