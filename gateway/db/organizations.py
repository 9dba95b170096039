"""The ``organizations`` and ``organization_memberships`` tables (LiteLLM's ``LiteLLM_OrganizationTable``
and ``LiteLLM_OrganizationMembership``): groups of teams with models and a budget row.

Every read joins the organization's budget row, so answers carry LiteLLM's ``litellm_budget_table``
and the team rules see the budget in one query.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from gateway.keys.records import TeamRecord

# Columns the admin API writes; body names are LiteLLM's (``organization_alias`` is ``alias``).
COLUMNS = frozenset({"alias", "budget_id", "models", "metadata", "created_by", "updated_by"})

_SELECT = """
SELECT o.id, o.alias, o.budget_id, o.models, o.spend, o.metadata, o.created_by, o.updated_by,
       o.created_at, o.updated_at,
       b.max_budget, b.soft_budget, b.budget_duration, b.budget_reset_at, b.rpm_limit, b.tpm_limit,
       b.max_parallel_requests, b.created_at AS b_created_at, b.updated_at AS b_updated_at
FROM organizations o LEFT JOIN budgets b ON b.id = o.budget_id
"""


def _checked(values: dict[str, Any]) -> list[str]:
    names = list(values)
    unknown = [n for n in names if n not in COLUMNS]
    if unknown:  # a programming error: the admin API maps fields to known columns
        raise ValueError(f"unknown organization columns {unknown}")
    return names


async def insert(conn: asyncpg.Connection, organization_id: str, values: dict[str, Any]) -> None:
    names = _checked(values)
    columns = ", ".join(["id", *names])
    placeholders = ", ".join(f"${i}" for i in range(1, len(names) + 2))
    await conn.execute(
        f"INSERT INTO organizations ({columns}) VALUES ({placeholders})", organization_id, *values.values()
    )


async def update(conn: asyncpg.Connection, organization_id: str, values: dict[str, Any]) -> None:
    names = _checked(values)
    sets = ", ".join(["updated_at = now()", *(f"{n} = ${i}" for i, n in enumerate(names, start=2))])
    await conn.execute(f"UPDATE organizations SET {sets} WHERE id = $1", organization_id, *values.values())


async def delete(conn: asyncpg.Connection, organization_ids: list[str]) -> None:
    # Teams keep existing without it (ON DELETE SET NULL); memberships go with it.
    await conn.execute("DELETE FROM organizations WHERE id = ANY($1::text[])", organization_ids)


async def fetch(
    conn: asyncpg.Connection, organization_ids: list[str], *, for_update: bool = False
) -> list[asyncpg.Record]:
    lock = " FOR UPDATE OF o" if for_update else ""
    return await conn.fetch(f"{_SELECT} WHERE o.id = ANY($1::text[]) ORDER BY o.id{lock}", organization_ids)


async def fetch_page(conn: asyncpg.Connection, limit: int, offset: int) -> list[asyncpg.Record]:
    return await conn.fetch(f"{_SELECT} ORDER BY o.created_at, o.id LIMIT $1 OFFSET $2", limit, offset)


async def admin_of(conn: asyncpg.Connection, user_id: str | None) -> list[str]:
    """The organizations whose ``org_admin`` is ``user_id``, a user of global role internal_user."""
    if user_id is None:
        return []
    rows = await conn.fetch(
        "SELECT m.organization_id FROM organization_memberships m JOIN users u ON u.id = m.user_id "
        "WHERE m.user_id = $1 AND m.role = 'org_admin' AND u.role = 'internal_user' AND NOT u.blocked "
        "ORDER BY m.organization_id",
        user_id,
    )
    return [r["organization_id"] for r in rows]


async def members(conn: asyncpg.Connection, organization_ids: list[str]) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT m.organization_id, m.user_id, m.role, m.created_at, u.email FROM organization_memberships m "
        "JOIN users u ON u.id = m.user_id WHERE m.organization_id = ANY($1::text[]) "
        "ORDER BY m.organization_id, m.user_id",
        organization_ids,
    )


async def upsert_member(conn: asyncpg.Connection, organization_id: str, user_id: str, role: str) -> None:
    await conn.execute(
        "INSERT INTO organization_memberships (organization_id, user_id, role) VALUES ($1, $2, $3) "
        "ON CONFLICT (organization_id, user_id) DO UPDATE SET role = EXCLUDED.role",
        organization_id,
        user_id,
        role,
    )


async def delete_member(conn: asyncpg.Connection, organization_id: str, user_id: str) -> bool:
    done = await conn.execute(
        "DELETE FROM organization_memberships WHERE organization_id = $1 AND user_id = $2",
        organization_id,
        user_id,
    )
    return done.endswith(" 1")


async def teams(conn: asyncpg.Connection, organization_ids: list[str]) -> list[TeamRecord]:
    rows = await conn.fetch(
        f"SELECT {TeamRecord.COLUMNS} FROM teams WHERE organization_id = ANY($1::text[]) "
        "ORDER BY created_at, id",
        organization_ids,
    )
    return [TeamRecord.from_row(r) for r in rows]
