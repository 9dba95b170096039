"""200 concurrent requests from several keys: recorded spend adds up exactly, and survives a restart."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import asyncpg
import httpx
import openai

from tests.control_plane.conftest import MASTER_KEY, UNIT_COST, gateway_config
from tests.support.fake_openai import FakeOpenAI
from tests.support.gateway_process import GatewayProcess, gateway_process


def _admin(gw: GatewayProcess, path: str, body: dict) -> dict:
    response = httpx.post(
        gw.base_url + path, json=body, headers={"Authorization": f"Bearer {MASTER_KEY}"}, timeout=30
    )
    assert response.status_code == 200, response.text
    return response.json()


async def _fire(gw: GatewayProcess, keys: list[str], total: int) -> None:
    clients = [openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key=k, max_retries=0) for k in keys]
    limit = asyncio.Semaphore(200)

    async def one(i: int) -> None:
        async with limit:
            await clients[i % len(clients)].chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": f"request {i}"}]
            )

    await asyncio.gather(*(one(i) for i in range(total)))
    for client in clients:
        await client.close()


async def _wait_for_logs(conn: asyncpg.Connection, key_hashes: list[str], count: int) -> None:
    deadline = time.monotonic() + 30
    while await conn.fetchval("SELECT count(*) FROM spend_logs WHERE key_hash = ANY($1)", key_hashes) < count:
        assert time.monotonic() < deadline, "spend logs were not written"
        await asyncio.sleep(0.1)


def test_concurrent_spend_adds_up_exactly_and_survives_restart(
    fake_upstream: FakeOpenAI, database_url: str
) -> None:
    config = gateway_config(fake_upstream.base_url)
    env = {"DATABASE_URL": database_url}
    with gateway_process(config, env=env) as gw:
        teams = [
            _admin(gw, "/team/new", {"team_alias": f"spend-{i}-{time.monotonic_ns()}"})["team_id"]
            for i in range(2)
        ]
        created = [_admin(gw, "/key/generate", {"team_id": teams[i % 2]}) for i in range(4)]
        keys, hashes = [c["key"] for c in created], [c["token"] for c in created]
        asyncio.run(_fire(gw, keys, 200))
    # The gateway stopped (SIGTERM): whatever was queued must have been flushed on the way out.

    async def check_after(expected_per_key: int) -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await _wait_for_logs(conn, hashes, expected_per_key * 4)
            for key_hash in hashes:
                spend = await conn.fetchval("SELECT spend FROM virtual_keys WHERE token_hash = $1", key_hash)
                logs = await conn.fetchrow(
                    "SELECT count(*) AS n, sum(spend) AS total FROM spend_logs WHERE key_hash = $1", key_hash
                )
                assert logs["n"] == expected_per_key
                assert spend == logs["total"] == UNIT_COST * expected_per_key
                daily = await conn.fetchval(
                    "SELECT sum(spend) FROM daily_spend WHERE key_hash = $1", key_hash
                )
                assert daily == spend
            for team in teams:
                spend = await conn.fetchval("SELECT spend FROM teams WHERE id = $1", team)
                assert spend == UNIT_COST * expected_per_key * 2
                assert (
                    await conn.fetchval("SELECT sum(spend) FROM spend_logs WHERE team_id = $1", team) == spend
                )
        finally:
            await conn.close()

    asyncio.run(check_after(50))

    # Restarted, the gateway still knows the keys and keeps adding to the same totals.
    with gateway_process(config, env=env) as gw:
        asyncio.run(_fire(gw, keys, 40))
        report = httpx.get(
            gw.base_url + "/global/spend/report",
            params={"group_by": "team"},
            headers={"Authorization": f"Bearer {MASTER_KEY}"},
            timeout=30,
        ).json()
        logs = httpx.get(
            gw.base_url + "/spend/logs",
            params={"api_key": keys[0]},
            headers={"Authorization": f"Bearer {MASTER_KEY}"},
            timeout=30,
        ).json()
    asyncio.run(check_after(60))
    by_team = {t["team_name"]: Decimal(str(t["total_spend"])) for day in report for t in day["teams"]}
    assert set(teams) <= set(by_team)
    assert len(logs) >= 50 and all(row["api_key"] == hashes[0] for row in logs)
