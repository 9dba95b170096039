"""KeyResolver, SpendSink and budget resets against a real Postgres (no HTTP)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest

from gateway.db import Database
from gateway.db.database import configure_connection
from gateway.errors import GatewayError
from gateway.keys import store
from gateway.keys.resolver import PostgresKeyResolver
from gateway.keys.tokens import display_name, generate_key, hash_key
from gateway.pipeline import Principal, Usage, UsageEvent
from gateway.spend.budget_reset import reset_due_budgets
from gateway.spend.sink import PostgresSpendSink

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _new_key(db: Database, **values: object) -> tuple[str, str]:
    key = generate_key()
    async with db.pool.acquire() as conn:
        await store.insert_key(conn, {"token_hash": hash_key(key), "key_name": display_name(key), **values})
    return key, hash_key(key)


async def _new_team(db: Database, **values: object) -> str:
    team_id = f"team-{time.monotonic_ns()}"
    async with db.pool.acquire() as conn:
        await store.insert_team(conn, {"id": team_id, **values})
    return team_id


def _event(
    principal: Principal, cost: float, *, model: str = "gpt-4o-mini", request_id: str = "r"
) -> UsageEvent:
    now = time.time()
    return UsageEvent(
        request_id=request_id,
        principal=principal,
        model=model,
        deployment_id=None,
        provider_model=f"openai/{model}",
        usage=Usage(10, 5),
        cost=cost,
        status="success",
        cache_hit=False,
        started_at=now,
        ended_at=now,
        stream=False,
    )


async def test_wrong_key_costs_one_query_then_none(db: Database) -> None:
    resolver = PostgresKeyResolver(db.pool)
    assert await resolver.resolve("sk-definitely-not-a-key") is None
    assert await resolver.resolve("sk-definitely-not-a-key") is None
    assert resolver.db_lookups == 1
    # A burst of concurrent misses for one key shares a single query.
    results = await asyncio.gather(*(resolver.resolve("sk-another-wrong-key") for _ in range(50)))
    assert results == [None] * 50 and resolver.db_lookups == 2


async def test_cached_key_is_resolved_without_the_database(db: Database) -> None:
    team = await _new_team(db, models=["gpt-4o-mini", "gpt-4o"], rpm_limit=50)
    key, key_hash = await _new_key(
        db, team_id=team, models=["gpt-4o-mini"], rpm_limit=5, model_tpm_limit={"gpt-4o-mini": 100}
    )
    resolver = PostgresKeyResolver(db.pool)
    first = await resolver.resolve(key)
    for _ in range(10):
        assert await resolver.resolve(key) is first
    assert resolver.db_lookups == 1
    assert first is not None and first.kind == "virtual" and first.key_hash == key_hash
    assert first.team_id == team and first.models == ("gpt-4o-mini",)
    scopes = {(s.scope, s.id): s for s in first.limits}
    assert scopes[("key", key_hash)].rpm == 5
    assert scopes[("team", team)].rpm == 50
    assert scopes[("key_model", f"{key_hash}:gpt-4o-mini")].tpm == 100
    with pytest.raises(GatewayError) as denied:
        PostgresKeyResolver.check_model(first, "gpt-4o")
    assert denied.value.status == 403


async def test_blocked_expired_and_over_budget_keys_are_refused(db: Database) -> None:
    resolver = PostgresKeyResolver(db.pool)
    blocked, _ = await _new_key(db, blocked=True)
    expired, _ = await _new_key(db, expires=datetime.now(UTC) - timedelta(seconds=1))
    spent, _ = await _new_key(db, max_budget=Decimal("1"), spend=Decimal("1"))
    team = await _new_team(db, max_budget=Decimal("0.5"), spend=Decimal("0.75"))
    team_spent, _ = await _new_key(db, team_id=team)
    for key, status, code in (
        (blocked, 401, "key_blocked"),
        (expired, 401, "key_expired"),
        (spent, 400, "budget_exceeded"),
        (team_spent, 400, "budget_exceeded"),
    ):
        with pytest.raises(GatewayError) as refused:
            await resolver.resolve(key)
        assert (refused.value.status, refused.value.code) == (status, code)


async def test_sink_charges_key_team_user_exactly_and_flushes_on_close(db: Database) -> None:
    team = await _new_team(db)
    user = f"user-{time.monotonic_ns()}"
    async with db.pool.acquire() as conn:
        await store.insert_user(conn, {"id": user})
    keys = [await _new_key(db, team_id=team, user_id=user) for _ in range(3)]
    resolver = PostgresKeyResolver(db.pool)
    principals = [await resolver.resolve(k) for k, _ in keys]
    sink = PostgresSpendSink(db.pool, flush_interval=0.05, batch_size=64, on_charged=resolver.apply_spend)
    sink.start()
    costs = [0.000123456789 * (i % 7 + 1) for i in range(500)]
    for i, cost in enumerate(costs):
        principal = principals[i % 3]
        assert principal is not None
        sink.record(_event(principal, cost, request_id=f"req-{i}"))
    await sink.close()
    assert sink.pending == 0
    expected = [sum(Decimal(c).quantize(Decimal("1e-12")) for c in costs[i::3]) for i in range(3)]
    async with db.pool.acquire() as conn:
        for (_, key_hash), want in zip(keys, expected, strict=True):
            assert (
                await conn.fetchval("SELECT spend FROM virtual_keys WHERE token_hash = $1", key_hash) == want
            )
            assert (
                await conn.fetchval("SELECT sum(spend) FROM spend_logs WHERE key_hash = $1", key_hash) == want
            )
            assert (
                await conn.fetchval("SELECT sum(spend) FROM daily_spend WHERE key_hash = $1", key_hash)
                == want
            )
        assert await conn.fetchval("SELECT spend FROM teams WHERE id = $1", team) == sum(expected)
        assert await conn.fetchval("SELECT spend FROM users WHERE id = $1", user) == sum(expected)
        assert await conn.fetchval("SELECT count(*) FROM spend_logs WHERE team_id = $1", team) == 500
    # The resolver's cached budgets were refreshed by the sink.
    assert resolver._budgets[f"team:{team}"].spend == float(sum(expected))


async def test_spend_log_rows_keep_every_field_exactly(db: Database) -> None:
    # The batch travels as one jsonb parameter: text with JSON's special characters, a cost that prints in
    # exponent form, half-microsecond timestamps and nested metadata must come back as they went in.
    team = await _new_team(db)
    key, key_hash = await _new_key(db, team_id=team)
    principal = await PostgresKeyResolver(db.pool).resolve(key)
    assert principal is not None
    tricky = 'q"uo\\te,{brace}\n\u00fc\u2603'
    event = UsageEvent(
        request_id=f"row-{time.monotonic_ns()}",
        principal=principal,
        model=tricky,
        deployment_id="dep-1",
        provider_model="openai/x",
        usage=Usage(1_000_000, 3),
        cost=1.23e-7,
        status="failure",
        cache_hit=True,
        started_at=1733385600.1234565,
        ended_at=1733385600.9999995,
        stream=True,
        error_code="upstream_error",
        metadata={"tags": ["a", "b\n"], "n": 1.5, "nested": {"k": None}},
        operation="messages",
        end_user=f"customer,{time.monotonic_ns()}",
    )
    bare = _event(principal, 0.0, request_id=f"bare-{time.monotonic_ns()}")
    sink = PostgresSpendSink(db.pool)
    sink.record(event)
    sink.record(bare)
    assert await sink.flush() == 2
    async with db.pool.acquire() as conn:
        row = await conn.fetchrow("SELECT * FROM spend_logs WHERE request_id = $1", event.request_id)
        plain = await conn.fetchrow("SELECT * FROM spend_logs WHERE request_id = $1", bare.request_id)
    assert row is not None and plain is not None
    assert {k: v for k, v in dict(row).items() if k != "id"} == {
        "request_id": event.request_id,
        "key_hash": key_hash,
        "team_id": team,
        "user_id": None,
        "model": tricky,
        "deployment_id": "dep-1",
        "provider_model": "openai/x",
        "prompt_tokens": 1_000_000,
        "completion_tokens": 3,
        "total_tokens": 1_000_003,
        "spend": Decimal("1.23e-7"),
        "status": "failure",
        "cache_hit": True,
        "stream": True,
        "error_code": "upstream_error",
        "start_time": datetime.fromtimestamp(event.started_at, UTC),
        "end_time": datetime.fromtimestamp(event.ended_at, UTC),
        "metadata": event.metadata,
        "operation": "messages",
        "end_user": event.end_user,
    }
    assert plain["deployment_id"] is None and plain["error_code"] is None and plain["user_id"] is None
    assert plain["metadata"] == {} and plain["operation"] == "chat" and plain["end_user"] is None


async def test_failed_flush_is_retried_without_losing_or_doubling_rows(db: Database) -> None:
    team = await _new_team(db)
    key, key_hash = await _new_key(db, team_id=team)
    principal = await PostgresKeyResolver(db.pool).resolve(key)
    assert principal is not None
    impatient = await asyncpg.create_pool(
        db.url, min_size=1, max_size=2, init=configure_connection, server_settings={"lock_timeout": "200"}
    )
    sink = PostgresSpendSink(impatient, batch_size=10)
    for i in range(25):
        sink.record(_event(principal, 0.001, request_id=f"retry-{i}"))
    # Every write fails while another transaction holds the team row (the sink's pool gives up on locks
    # after 200 ms).
    async with db.pool.acquire() as blocker, blocker.transaction():
        await blocker.execute("SELECT 1 FROM teams WHERE id = $1 FOR UPDATE", team)
        with pytest.raises(asyncpg.LockNotAvailableError):
            await sink.flush()
    assert sink.pending == 25 and sink.failed_flushes == 1
    assert await sink.flush() == 25
    assert await db.pool.fetchval("SELECT count(*) FROM spend_logs WHERE key_hash = $1", key_hash) == 25
    assert await db.pool.fetchval(
        "SELECT spend FROM virtual_keys WHERE token_hash = $1", key_hash
    ) == Decimal("0.025")
    # A batch whose commit went through but was retried anyway (lost acknowledgement) changes nothing.
    sink.record(_event(principal, 0.5, request_id="once"))
    batch = [sink._queue.popleft()]
    assert await sink._write(batch) == 1
    assert await sink._write(batch) == 0
    assert await db.pool.fetchval(
        "SELECT spend FROM virtual_keys WHERE token_hash = $1", key_hash
    ) == Decimal("0.525")
    await impatient.close()


async def test_a_flush_writes_what_was_queued_when_it_started_and_close_writes_the_rest(db: Database) -> None:
    key, key_hash = await _new_key(db)
    principal = await PostgresKeyResolver(db.pool).resolve(key)
    assert principal is not None
    late: list[int] = []

    def traffic_during_the_write(kind: str, entity: str, spend: float) -> None:
        # Each committed batch sees a new request arrive, as it would under steady load.
        if len(late) < 50:
            late.append(1)
            sink.record(_event(principal, 0.001, request_id=f"late-{len(late)}"))

    sink = PostgresSpendSink(db.pool, batch_size=10, on_charged=traffic_during_the_write)
    for i in range(25):
        sink.record(_event(principal, 0.001, request_id=f"early-{i}"))
    # Three batches (10 + 10 + 5): the events recorded meanwhile wait for the next tick.
    assert await sink.flush() == 25
    assert sink.pending == 3 and len(late) == 3
    await sink.close()
    assert sink.pending == 0
    count = await db.pool.fetchval("SELECT count(*) FROM spend_logs WHERE key_hash = $1", key_hash)
    assert count == 25 + len(late)
    assert (
        await db.pool.fetchval("SELECT spend FROM virtual_keys WHERE token_hash = $1", key_hash)
        == Decimal("0.001") * count
    )


async def test_budget_reset_zeroes_due_spend_once(db: Database) -> None:
    past = datetime.now(UTC) - timedelta(minutes=1)
    _, due = await _new_key(db, spend=Decimal("3"), budget_duration="1h", budget_reset_at=past)
    _, not_due = await _new_key(
        db, spend=Decimal("3"), budget_duration="1h", budget_reset_at=past + timedelta(hours=2)
    )
    results = await asyncio.gather(*(reset_due_budgets(db.pool) for _ in range(3)))
    assert sum(results) >= 1
    row = await db.pool.fetchrow("SELECT spend, budget_reset_at FROM virtual_keys WHERE token_hash = $1", due)
    assert row["spend"] == 0 and row["budget_reset_at"] == past + timedelta(hours=1)
    assert await db.pool.fetchval("SELECT spend FROM virtual_keys WHERE token_hash = $1", not_due) == 3


async def test_sink_prices_events_that_arrive_without_a_cost(db: Database) -> None:
    key, key_hash = await _new_key(db)
    principal = await PostgresKeyResolver(db.pool).resolve(key)
    assert principal is not None
    sink = PostgresSpendSink(db.pool)
    sink.record(_event(principal, 0.0, model="gpt-4o"))  # 10 prompt + 5 completion tokens
    await sink.close()
    spend = await db.pool.fetchval("SELECT spend FROM virtual_keys WHERE token_hash = $1", key_hash)
    assert spend == Decimal(10 * 2.5e-6 + 5 * 1e-5).quantize(Decimal("1e-12"))
