"""The ``budgets`` table (LiteLLM's ``LiteLLM_BudgetTable``): shared limits teams and keys point at."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

# Body field -> column; the names LiteLLM's payloads use are the columns' own.
COLUMNS = (
    "max_budget",
    "soft_budget",
    "budget_duration",
    "budget_reset_at",
    "rpm_limit",
    "tpm_limit",
    "max_parallel_requests",
)
_SELECT = "SELECT id, " + ", ".join(COLUMNS) + ", created_at, updated_at FROM budgets"


async def insert(
    conn: asyncpg.Connection, budget_id: str, values: dict[str, Any], now: datetime
) -> asyncpg.Record:
    names = ["id", *values, "created_at", "updated_at"]
    args = [budget_id, *values.values(), now, now]
    placeholders = ", ".join(f"${i}" for i in range(1, len(args) + 1))
    sql = f"INSERT INTO budgets ({', '.join(names)}) VALUES ({placeholders}) RETURNING *"
    return await conn.fetchrow(sql, *args)


async def update(
    conn: asyncpg.Connection, budget_id: str, values: dict[str, Any], now: datetime
) -> asyncpg.Record | None:
    sets = [f"{name} = ${i}" for i, name in enumerate(values, start=3)]
    sql = f"UPDATE budgets SET {', '.join(['updated_at = $2', *sets])} WHERE id = $1 RETURNING *"
    return await conn.fetchrow(sql, budget_id, now, *values.values())


async def delete(conn: asyncpg.Connection, budget_id: str) -> asyncpg.Record | None:
    # Teams and keys pointing at it lose the link (ON DELETE SET NULL), as in LiteLLM.
    return await conn.fetchrow("DELETE FROM budgets WHERE id = $1 RETURNING *", budget_id)


async def fetch(conn: asyncpg.Connection, budget_ids: list[str]) -> list[asyncpg.Record]:
    return await conn.fetch(f"{_SELECT} WHERE id = ANY($1::text[]) ORDER BY created_at, id", budget_ids)


async def for_request(pool: Any, budget_id: str) -> asyncpg.Record | None:
    """One row, through the request path's pool (a ``GuardedPool``)."""
    return await pool.fetchrow(f"{_SELECT} WHERE id = $1", budget_id)


async def fetch_all(conn: asyncpg.Connection, limit: int) -> list[asyncpg.Record]:
    return await conn.fetch(f"{_SELECT} ORDER BY created_at, id LIMIT $1", limit)
