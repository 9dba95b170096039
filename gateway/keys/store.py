"""SQL for keys, teams, users and memberships (parameterised only; column names come from whitelists)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from datetime import date, datetime
from typing import Any

import asyncpg

from gateway.keys.records import KeyRecord, KeyStanding, MembershipRecord, TeamRecord, UserRecord

_KEY_COLUMNS = frozenset(KeyRecord.COLUMNS.replace(" ", "").split(","))
_TEAM_COLUMNS = frozenset(TeamRecord.COLUMNS.replace(" ", "").split(","))
_USER_COLUMNS = frozenset(UserRecord.COLUMNS.replace(" ", "").split(","))


def _assignments(values: Mapping[str, Any], allowed: frozenset[str], start: int) -> tuple[str, list[Any]]:
    names = list(values)
    unknown = [n for n in names if n not in allowed]
    if unknown:  # a programming error: callers map request fields to known columns
        raise ValueError(f"unknown columns {unknown}")
    sql = ", ".join(f"{name} = ${start + i}" for i, name in enumerate(names))
    return sql, [values[n] for n in names]


async def _insert(
    conn: asyncpg.Connection, table: str, values: Mapping[str, Any], allowed: frozenset[str], columns: str
) -> asyncpg.Record:
    names = list(values)
    if any(n not in allowed for n in names):
        raise ValueError(f"unknown columns in {names}")
    placeholders = ", ".join(f"${i + 1}" for i in range(len(names)))
    return await conn.fetchrow(
        f"INSERT INTO {table} ({', '.join(names)}) VALUES ({placeholders}) RETURNING {columns}",
        *[values[n] for n in names],
    )


async def _update(
    conn: asyncpg.Connection,
    table: str,
    pk: str,
    pk_value: str,
    values: Mapping[str, Any],
    allowed: frozenset[str],
    columns: str,
) -> asyncpg.Record | None:
    if not values:
        return await conn.fetchrow(f"SELECT {columns} FROM {table} WHERE {pk} = $1", pk_value)
    sql, args = _assignments(values, allowed, 2)
    return await conn.fetchrow(
        f"UPDATE {table} SET {sql}, updated_at = now() WHERE {pk} = $1 RETURNING {columns}", pk_value, *args
    )


# ---- keys -------------------------------------------------------------------------------------------


async def insert_key(conn: asyncpg.Connection, values: Mapping[str, Any]) -> KeyRecord:
    return KeyRecord.from_row(await _insert(conn, "virtual_keys", values, _KEY_COLUMNS, KeyRecord.COLUMNS))


async def get_key(conn: asyncpg.Connection, token_hash: str, *, for_update: bool = False) -> KeyRecord | None:
    lock = " FOR UPDATE" if for_update else ""
    row = await conn.fetchrow(
        f"SELECT {KeyRecord.COLUMNS} FROM virtual_keys WHERE token_hash = $1{lock}", token_hash
    )
    return KeyRecord.from_row(row) if row else None


async def key_standing(conn: asyncpg.Connection, record: KeyRecord) -> KeyStanding:
    """The key's user role, the user's role in the key's team, and whether user or team is blocked."""
    row = await conn.fetchrow(
        "SELECT u.role AS user_role, coalesce(u.blocked, false) AS user_blocked, "
        "(SELECT m.role FROM team_memberships m WHERE m.team_id = $2 AND m.user_id = u.id) AS member_role, "
        "coalesce((SELECT t.blocked FROM teams t WHERE t.id = $2), false) AS team_blocked "
        "FROM (SELECT 1) AS one LEFT JOIN users u ON u.id = $1",
        record.user_id,
        record.team_id,
    )
    return KeyStanding(
        user_role=row["user_role"],
        member_role=row["member_role"],
        user_blocked=row["user_blocked"],
        team_blocked=row["team_blocked"],
    )


async def key_last_active(conn: asyncpg.Connection, token_hash: str) -> datetime | None:
    """When the key was last used: the end of its newest spend row."""
    return await conn.fetchval("SELECT max(end_time) FROM spend_logs WHERE key_hash = $1", token_hash)


async def key_model_days(conn: asyncpg.Connection, token_hash: str) -> list[tuple[str, date, float]]:
    """The key's spend per model and UTC day (``daily_spend``), oldest first."""
    rows = await conn.fetch(
        "SELECT model, day, sum(spend) AS spend FROM daily_spend WHERE key_hash = $1 "
        "GROUP BY model, day ORDER BY day, model",
        token_hash,
    )
    return [(r["model"], r["day"], float(r["spend"])) for r in rows]


async def key_hash_for_alias(conn: asyncpg.Connection, alias: str) -> str | None:
    return await conn.fetchval("SELECT token_hash FROM virtual_keys WHERE key_alias = $1", alias)


async def update_key(
    conn: asyncpg.Connection, token_hash: str, values: Mapping[str, Any]
) -> KeyRecord | None:
    row = await _update(
        conn, "virtual_keys", "token_hash", token_hash, values, _KEY_COLUMNS, KeyRecord.COLUMNS
    )
    return KeyRecord.from_row(row) if row else None


async def replace_key_hash(
    conn: asyncpg.Connection, old_hash: str, new_hash: str, key_name: str
) -> KeyRecord | None:
    row = await conn.fetchrow(
        f"UPDATE virtual_keys SET token_hash = $2, key_name = $3, updated_at = now() WHERE token_hash = $1 "
        f"RETURNING {KeyRecord.COLUMNS}",
        old_hash,
        new_hash,
        key_name,
    )
    return KeyRecord.from_row(row) if row else None


async def delete_keys(conn: asyncpg.Connection, hashes: Iterable[str]) -> list[KeyRecord]:
    rows = await conn.fetch(
        f"DELETE FROM virtual_keys WHERE token_hash = ANY($1::text[]) RETURNING {KeyRecord.COLUMNS}",
        list(hashes),
    )
    return [KeyRecord.from_row(r) for r in rows]


async def list_keys(
    conn: asyncpg.Connection,
    *,
    team_id: str | None = None,
    user_id: str | None = None,
    key_alias: str | None = None,
    token_hash: str | None = None,
    organization_id: str | None = None,
    page: int = 1,
    size: int = 100,
) -> tuple[list[KeyRecord], int]:
    where = (
        "($1::text IS NULL OR team_id = $1) AND ($2::text IS NULL OR user_id = $2) "
        "AND ($3::text IS NULL OR key_alias = $3) AND ($4::text IS NULL OR token_hash = $4) "
        "AND ($5::text IS NULL OR team_id IN (SELECT id FROM teams WHERE organization_id = $5))"
    )
    filters = (team_id, user_id, key_alias, token_hash, organization_id)
    total = await conn.fetchval(f"SELECT count(*) FROM virtual_keys WHERE {where}", *filters)
    rows = await conn.fetch(
        f"SELECT {KeyRecord.COLUMNS} FROM virtual_keys WHERE {where} ORDER BY created_at, token_hash "
        "LIMIT $6 OFFSET $7",
        *filters,
        size,
        (page - 1) * size,
    )
    return [KeyRecord.from_row(r) for r in rows], int(total)


# ---- teams ------------------------------------------------------------------------------------------


async def insert_team(conn: asyncpg.Connection, values: Mapping[str, Any]) -> TeamRecord:
    return TeamRecord.from_row(await _insert(conn, "teams", values, _TEAM_COLUMNS, TeamRecord.COLUMNS))


async def get_team(conn: asyncpg.Connection, team_id: str) -> TeamRecord | None:
    row = await conn.fetchrow(f"SELECT {TeamRecord.COLUMNS} FROM teams WHERE id = $1", team_id)
    return TeamRecord.from_row(row) if row else None


async def update_team(conn: asyncpg.Connection, team_id: str, values: Mapping[str, Any]) -> TeamRecord | None:
    row = await _update(conn, "teams", "id", team_id, values, _TEAM_COLUMNS, TeamRecord.COLUMNS)
    return TeamRecord.from_row(row) if row else None


async def delete_teams(conn: asyncpg.Connection, team_ids: list[str]) -> list[TeamRecord]:
    rows = await conn.fetch(
        f"DELETE FROM teams WHERE id = ANY($1::text[]) RETURNING {TeamRecord.COLUMNS}", team_ids
    )
    return [TeamRecord.from_row(r) for r in rows]


async def list_teams(
    conn: asyncpg.Connection, *, user_id: str | None = None, organization_id: str | None = None
) -> list[TeamRecord]:
    rows = await conn.fetch(
        f"SELECT {TeamRecord.COLUMNS} FROM teams WHERE ($1::text IS NULL OR id IN "
        "(SELECT team_id FROM team_memberships WHERE user_id = $1)) "
        "AND ($2::text IS NULL OR organization_id = $2) ORDER BY created_at, id",
        user_id,
        organization_id,
    )
    return [TeamRecord.from_row(r) for r in rows]


# Sort columns LiteLLM's /v2/team/list takes (its names -> ours); anything else is refused by the caller.
TEAM_SORTS = {"team_id": "id", "team_alias": "alias", "created_at": "created_at", "spend": "spend"}


async def page_teams(
    conn: asyncpg.Connection,
    *,
    user_id: str | None,
    organization_id: str | None,
    team_id: str | None,
    alias_part: str | None,
    sort_by: str,
    descending: bool,
    page: int,
    size: int,
) -> tuple[list[TeamRecord], int]:
    """One page of teams (``alias_part``: a case-insensitive substring of the alias) and how many match."""
    where = (
        "($1::text IS NULL OR id IN (SELECT team_id FROM team_memberships WHERE user_id = $1)) "
        "AND ($2::text IS NULL OR organization_id = $2) AND ($3::text IS NULL OR id = $3) "
        "AND ($4::text IS NULL OR strpos(lower(alias), lower($4)) > 0)"
    )
    args = (user_id, organization_id, team_id, alias_part)
    total = await conn.fetchval(f"SELECT count(*) FROM teams WHERE {where}", *args)
    order = f"{TEAM_SORTS[sort_by]} {'DESC' if descending else 'ASC'} NULLS LAST, id"
    rows = await conn.fetch(
        f"SELECT {TeamRecord.COLUMNS} FROM teams WHERE {where} ORDER BY {order} LIMIT $5 OFFSET $6",
        *args,
        size,
        (page - 1) * size,
    )
    return [TeamRecord.from_row(r) for r in rows], int(total)


async def team_members(conn: asyncpg.Connection, team_id: str) -> list[MembershipRecord]:
    rows = await conn.fetch(
        "SELECT team_id, user_id, role FROM team_memberships WHERE team_id = $1 ORDER BY user_id", team_id
    )
    return [MembershipRecord(**dict(r)) for r in rows]


async def user_memberships(conn: asyncpg.Connection, user_id: str) -> list[MembershipRecord]:
    rows = await conn.fetch(
        "SELECT team_id, user_id, role FROM team_memberships WHERE user_id = $1 ORDER BY team_id", user_id
    )
    return [MembershipRecord(**dict(r)) for r in rows]


async def member_role(conn: asyncpg.Connection, team_id: str, user_id: str) -> str | None:
    return await conn.fetchval(
        "SELECT role FROM team_memberships WHERE team_id = $1 AND user_id = $2", team_id, user_id
    )


async def upsert_member(conn: asyncpg.Connection, team_id: str, user_id: str, role: str) -> None:
    await conn.execute(
        "INSERT INTO team_memberships (team_id, user_id, role) VALUES ($1, $2, $3) "
        "ON CONFLICT (team_id, user_id) DO UPDATE SET role = EXCLUDED.role",
        team_id,
        user_id,
        role,
    )


async def delete_member(conn: asyncpg.Connection, team_id: str, user_id: str) -> bool:
    done = await conn.execute(
        "DELETE FROM team_memberships WHERE team_id = $1 AND user_id = $2", team_id, user_id
    )
    return done.endswith(" 1")


# ---- users ------------------------------------------------------------------------------------------


async def insert_user(conn: asyncpg.Connection, values: Mapping[str, Any]) -> UserRecord:
    return UserRecord.from_row(await _insert(conn, "users", values, _USER_COLUMNS, UserRecord.COLUMNS))


async def get_user(conn: asyncpg.Connection, user_id: str) -> UserRecord | None:
    row = await conn.fetchrow(f"SELECT {UserRecord.COLUMNS} FROM users WHERE id = $1", user_id)
    return UserRecord.from_row(row) if row else None


async def user_id_for_email(conn: asyncpg.Connection, email: str) -> str | None:
    return await conn.fetchval("SELECT id FROM users WHERE email = $1", email)


async def update_user(conn: asyncpg.Connection, user_id: str, values: Mapping[str, Any]) -> UserRecord | None:
    row = await _update(conn, "users", "id", user_id, values, _USER_COLUMNS, UserRecord.COLUMNS)
    return UserRecord.from_row(row) if row else None


async def delete_users(conn: asyncpg.Connection, user_ids: list[str]) -> list[UserRecord]:
    rows = await conn.fetch(
        f"DELETE FROM users WHERE id = ANY($1::text[]) RETURNING {UserRecord.COLUMNS}", user_ids
    )
    return [UserRecord.from_row(r) for r in rows]


async def list_users(
    conn: asyncpg.Connection, *, page: int, size: int, role: str | None = None
) -> tuple[list[UserRecord], int]:
    total = await conn.fetchval("SELECT count(*) FROM users WHERE $1::text IS NULL OR role = $1", role)
    rows = await conn.fetch(
        f"SELECT {UserRecord.COLUMNS} FROM users WHERE $1::text IS NULL OR role = $1 ORDER BY created_at, id "
        "LIMIT $2 OFFSET $3",
        role,
        size,
        (page - 1) * size,
    )
    return [UserRecord.from_row(r) for r in rows], int(total)


# ---- audit ------------------------------------------------------------------------------------------


async def write_audit(
    conn: asyncpg.Connection,
    *,
    actor: str,
    action: str,
    object_type: str,
    object_id: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
) -> None:
    """Record an admin write, in the caller's transaction so the two commit together."""
    await conn.execute(
        "INSERT INTO audit_logs (id, actor, action, object_type, object_id, before, after) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7)",
        str(uuid.uuid4()),
        actor,
        action,
        object_type,
        object_id,
        None if before is None else json.loads(json.dumps(before, default=str)),
        None if after is None else json.loads(json.dumps(after, default=str)),
    )
