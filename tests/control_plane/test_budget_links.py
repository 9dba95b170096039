"""Budget rows enforced: a key, team or user that points at a ``budgets`` row (``budget_id``) is held to
that row's ``max_budget``, rpm/tpm and ``soft_budget`` as well as to its own limits (the stricter
wins), and the row's ``budget_duration`` resets the spend of what is linked to it.

Against a real gateway and Postgres (the fake OpenAI upstream, each request costing ``UNIT_COST``);
spend is written in batches, so the tests poll for its effect with a deadline only a broken gateway
reaches.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from gateway.db import Database
from gateway.spend.budget_reset import reset_due_budgets
from tests.control_plane.conftest import UNIT_COST
from tests.control_plane.test_admin_api import call, ok, sql, unique
from tests.support.gateway_process import GatewayProcess

SOFT_HEADER = "x-switchyard-soft-budget-exceeded"


def _chat(gw: GatewayProcess, key: str) -> httpx.Response:
    return httpx.post(
        gw.base_url + "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def _budget(gw: GatewayProcess, **limits: Any) -> str:
    return ok(call(gw, "/budget/new", {"budget_id": unique("tier"), **limits}))["budget_id"]


def _refused_once_spent(gw: GatewayProcess, key: str, what: str) -> dict[str, Any]:
    """Chat until the budget refuses (spend lands in batches); the refusal's error body."""
    deadline = time.monotonic() + 30
    while True:
        resp = _chat(gw, key)
        if resp.status_code != 200:
            assert resp.status_code == 400, resp.text
            return resp.json()["error"]
        assert time.monotonic() < deadline, f"the {what} budget row was never enforced"
        time.sleep(0.05)


def test_key_is_held_to_its_budget_row_even_with_a_looser_own_budget(gateway: GatewayProcess) -> None:
    tier = _budget(gateway, max_budget=float(UNIT_COST) * 1.5)
    created = ok(call(gateway, "/key/generate", {"budget_id": tier, "max_budget": 100}))
    assert created["budget_id"] == tier
    error = _refused_once_spent(gateway, created["key"], "key")
    assert error["type"] == error["code"] == "budget_exceeded" and "Key spend" in error["message"]
    info = ok(call(gateway, "/key/info", params={"key": created["key"]}))["info"]
    assert info["budget_id"] == tier and info["spend"] >= float(UNIT_COST) * 1.5

    # A key without the link, otherwise the same, goes on.
    free = ok(call(gateway, "/key/generate", {"max_budget": 100}))["key"]
    assert _chat(gateway, free).status_code == 200


def test_team_and_user_are_held_to_their_budget_rows(gateway: GatewayProcess) -> None:
    team_tier = _budget(gateway, max_budget=float(UNIT_COST) * 1.5)
    team = ok(call(gateway, "/team/new", {"budget_id": team_tier}))
    assert team["budget_id"] == team_tier
    team_key = ok(call(gateway, "/key/generate", {"team_id": team["team_id"]}))["key"]
    assert "Team spend" in _refused_once_spent(gateway, team_key, "team")["message"]

    user_tier = _budget(gateway, max_budget=float(UNIT_COST) * 1.5)
    user = ok(call(gateway, "/user/new", {"user_id": unique("tiered"), "budget_id": user_tier}))
    assert user["budget_id"] == user_tier
    user_key = ok(call(gateway, "/key/generate", {"user_id": user["user_id"]}))["key"]
    assert "User spend" in _refused_once_spent(gateway, user_key, "user")["message"]

    # Unlinking (null) lifts the row's budget: the user's own (none) is all that is left.
    ok(call(gateway, "/user/update", {"user_id": user["user_id"], "budget_id": None}))
    deadline = time.monotonic() + 15  # other cached entries expire within the key cache TTL
    while _chat(gateway, user_key).status_code != 200:
        assert time.monotonic() < deadline, "unlinking the budget row did not lift it"
        time.sleep(0.1)


def test_budget_row_rate_limit_holds_the_key(gateway: GatewayProcess) -> None:
    tier = _budget(gateway, rpm_limit=2)
    key = ok(call(gateway, "/key/generate", {"budget_id": tier, "rpm_limit": 50}))["key"]
    statuses = [_chat(gateway, key).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]


def test_budget_row_soft_budget_warns(gateway: GatewayProcess) -> None:
    tier = _budget(gateway, soft_budget=float(UNIT_COST) / 2)
    key = ok(call(gateway, "/key/generate", {"budget_id": tier}))["key"]
    deadline = time.monotonic() + 30
    while SOFT_HEADER not in (resp := _chat(gateway, key)).headers:
        assert resp.status_code == 200, resp.text  # a soft budget never refuses
        assert time.monotonic() < deadline, "the row's soft budget never warned"
        time.sleep(0.05)
    assert "soft_budget=" in resp.headers[SOFT_HEADER]


def test_team_budget_row_soft_budget_warns_its_keys(gateway: GatewayProcess) -> None:
    tier = _budget(gateway, soft_budget=float(UNIT_COST) / 2)
    team = ok(call(gateway, "/team/new", {"budget_id": tier}))["team_id"]
    first, second = (ok(call(gateway, "/key/generate", {"team_id": team}))["key"] for _ in range(2))
    assert _chat(gateway, first).status_code == 200
    deadline = time.monotonic() + 30
    while SOFT_HEADER not in (resp := _chat(gateway, second)).headers:
        assert resp.status_code == 200, resp.text
        assert time.monotonic() < deadline, "the team row's soft budget never warned"
        time.sleep(0.05)
    assert resp.headers[SOFT_HEADER].startswith("team; spend=")
    metrics = httpx.get(gateway.base_url + "/metrics", timeout=30).text
    assert 'switchyard_soft_budget_exceeded_total{kind="team"}' in metrics


def test_unknown_budget_id_is_a_400(gateway: GatewayProcess) -> None:
    for path, body in (
        ("/key/generate", {"budget_id": "no-such-tier"}),
        ("/team/new", {"budget_id": "no-such-tier"}),
        ("/user/new", {"budget_id": "no-such-tier"}),
    ):
        resp = call(gateway, path, body)
        assert resp.status_code == 400, (path, resp.text)
        assert "budget_id" in resp.json()["error"]["message"]


@pytest.mark.asyncio(loop_scope="session")
async def test_budget_row_period_resets_what_is_linked(db: Database, database_url: str) -> None:
    now = datetime.now(UTC)
    tier, own_period_key, linked_key = unique("monthly"), unique("own"), unique("linked")
    customer = unique("customer")
    async with db.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO budgets (id, max_budget, budget_duration, budget_reset_at) "
            "VALUES ($1, 1, '30d', $2)",
            tier,
            now - timedelta(seconds=1),
        )
        for token, duration in ((own_period_key, "7d"), (linked_key, None)):
            await conn.execute(
                "INSERT INTO virtual_keys (token_hash, key_name, spend, budget_id, budget_duration, "
                "budget_reset_at) VALUES ($1, 'sk-...', 0.5, $2, $3, $4)",
                token,
                tier,
                duration,
                None if duration is None else now + timedelta(days=7),
            )
        await conn.execute(
            "INSERT INTO customers (id, spend, budget_id) VALUES ($1, 0.75, $2)", customer, tier
        )

    reset: list[tuple[str, str]] = []
    await reset_due_budgets(db.pool, now=now, on_reset=lambda kind, entity: reset.append((kind, entity)))
    assert ("key", linked_key) in reset and ("customer", customer) in reset
    assert ("key", own_period_key) not in reset  # its own period governs it

    spend = await asyncio.to_thread(
        sql,
        database_url,
        "SELECT token_hash AS id, spend FROM virtual_keys WHERE budget_id = $1 "
        "UNION ALL SELECT id, spend FROM customers WHERE budget_id = $1",
        tier,
    )
    assert {r["id"]: float(r["spend"]) for r in spend} == {
        own_period_key: 0.5,
        linked_key: 0.0,
        customer: 0.0,
    }
    (row,) = await asyncio.to_thread(
        sql, database_url, "SELECT budget_reset_at FROM budgets WHERE id = $1", tier
    )
    assert timedelta(days=29) < row["budget_reset_at"] - now <= timedelta(days=30)
