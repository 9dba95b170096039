"""The ``customers`` table (LiteLLM's ``LiteLLM_EndUserTable``): end users named by a request's ``user``.

A customer's limits live in the ``budgets`` row it points at; every read joins it, so the API answers
LiteLLM's ``litellm_budget_table`` and the request path sees the limits in one query.
"""

from __future__ import annotations

from typing import Any

import asyncpg

# Columns the admin API writes (the body's names are LiteLLM's, ``user_id`` being ``id``).
COLUMNS = frozenset(
    {"alias", "blocked", "budget_id", "models", "allowed_model_region", "default_model", "spend"}
)

_SELECT = """
SELECT c.id, c.alias, c.spend, c.blocked, c.budget_id, c.models, c.allowed_model_region, c.default_model,
       c.metadata, c.created_at, c.updated_at,
       b.max_budget, b.soft_budget, b.budget_duration, b.budget_reset_at, b.rpm_limit, b.tpm_limit,
       b.max_parallel_requests, b.created_at AS b_created_at, b.updated_at AS b_updated_at
FROM customers c LEFT JOIN budgets b ON b.id = c.budget_id
"""


def _checked(values: dict[str, Any]) -> list[str]:
    names = list(values)
    unknown = [n for n in names if n not in COLUMNS]
    if unknown:  # a programming error: the admin API maps fields to known columns
        raise ValueError(f"unknown customer columns {unknown}")
    return names


async def insert(conn: asyncpg.Connection, customer_id: str, values: dict[str, Any]) -> None:
    names = _checked(values)
    placeholders = ", ".join(f"${i}" for i in range(2, len(names) + 2))
    columns = ", ".join(["id", *names])
    await conn.execute(
        f"INSERT INTO customers ({columns}) VALUES ($1{', ' if names else ''}{placeholders})",
        customer_id,
        *values.values(),
    )


async def update(conn: asyncpg.Connection, customer_id: str, values: dict[str, Any]) -> bool:
    names = _checked(values)
    sets = ", ".join(["updated_at = now()", *(f"{n} = ${i}" for i, n in enumerate(names, start=2))])
    done = await conn.execute(f"UPDATE customers SET {sets} WHERE id = $1", customer_id, *values.values())
    return done.endswith(" 1")


async def set_blocked(conn: asyncpg.Connection, customer_ids: list[str], blocked: bool) -> None:
    """Block or unblock, creating unknown customers (LiteLLM's ``/customer/block`` upserts)."""
    await conn.execute(
        "INSERT INTO customers (id, blocked) SELECT unnest($1::text[]), $2 "
        "ON CONFLICT (id) DO UPDATE SET blocked = EXCLUDED.blocked, updated_at = now()",
        sorted(set(customer_ids)),
        blocked,
    )


async def delete(conn: asyncpg.Connection, customer_ids: list[str]) -> int:
    done = await conn.execute("DELETE FROM customers WHERE id = ANY($1::text[])", customer_ids)
    return int(done.split()[-1])


async def fetch(
    conn: asyncpg.Connection, customer_ids: list[str], *, for_update: bool = False
) -> list[asyncpg.Record]:
    lock = " FOR UPDATE OF c" if for_update else ""
    return await conn.fetch(f"{_SELECT} WHERE c.id = ANY($1::text[]) ORDER BY c.id{lock}", customer_ids)


async def fetch_page(conn: asyncpg.Connection, limit: int, offset: int) -> list[asyncpg.Record]:
    return await conn.fetch(f"{_SELECT} ORDER BY c.created_at, c.id LIMIT $1 OFFSET $2", limit, offset)


async def for_request(pool: Any, customer_id: str) -> asyncpg.Record | None:
    """What the request path checks for one customer (``pool``: a ``GuardedPool``)."""
    return await pool.fetchrow(f"{_SELECT} WHERE c.id = $1", customer_id)
