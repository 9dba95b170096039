"""LiteLLM's global spend views over ``spend_logs``, last 30 days (its ``MonthlyGlobalSpend``,
``Last30dKeysBySpend``, ``Last30dModelsBySpend`` and the per-team daily query), as parameterised SQL."""

from __future__ import annotations

import asyncpg

_WINDOW = "start_time >= now() - interval '30 days'"


async def total(conn: asyncpg.Connection) -> float:
    value = await conn.fetchval(f"SELECT coalesce(sum(spend), 0) FROM spend_logs WHERE {_WINDOW}")
    return float(value)


async def per_day(conn: asyncpg.Connection, key_hash: str | None) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT (start_time AT TIME ZONE 'UTC')::date AS date, sum(spend) AS spend FROM spend_logs "
        f"WHERE {_WINDOW} AND ($1::text IS NULL OR key_hash = $1) GROUP BY 1 ORDER BY 1",
        key_hash,
    )


async def per_key(conn: asyncpg.Connection, limit: int | None) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT l.key_hash AS api_key, k.key_alias, k.key_alias AS key_name, sum(l.spend) AS total_spend "
        "FROM spend_logs l LEFT JOIN virtual_keys k ON k.token_hash = l.key_hash "
        f"WHERE l.{_WINDOW} AND l.key_hash IS NOT NULL GROUP BY l.key_hash, k.key_alias "
        "ORDER BY total_spend DESC, api_key LIMIT $1",
        limit,
    )


async def per_model(conn: asyncpg.Connection, limit: int | None) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"SELECT model, sum(spend) AS total_spend FROM spend_logs WHERE {_WINDOW} AND model <> '' "
        "GROUP BY model ORDER BY total_spend DESC, model LIMIT $1",
        limit,
    )


async def per_team_day(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT (l.start_time AT TIME ZONE 'UTC')::date AS date, l.team_id, t.alias AS team_alias, "
        "sum(l.spend) AS total_spend FROM spend_logs l LEFT JOIN teams t ON t.id = l.team_id "
        f"WHERE l.{_WINDOW} AND l.team_id IS NOT NULL GROUP BY 1, 2, 3 ORDER BY 1, 2"
    )
