"""SQL for the ``model_deployments`` table: the models added through ``/model/new`` (LiteLLM's
``store_model_in_db``).

``params`` is the deployment's ``litellm_params`` with its secrets already sealed
(``gateway.admin.model_secrets``); this module never sees a credential in clear. ``updated_at`` is
set from ``clock_timestamp()`` on every write, so ``fingerprint`` changes with every insert, update
and delete, which is what every instance's poller (``gateway.admin.model_sync``) watches.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

_COLUMNS = "id, model_name, params, model_info, created_at, updated_at"


@dataclass(frozen=True, slots=True)
class ModelRow:
    id: str
    model_name: str
    params: dict[str, Any]  # sealed litellm_params
    model_info: dict[str, Any]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_record(cls, r: asyncpg.Record) -> ModelRow:
        return cls(
            id=r["id"],
            model_name=r["model_name"],
            params=dict(r["params"] or {}),
            model_info=dict(r["model_info"] or {}),
            created_at=r["created_at"],
            updated_at=r["updated_at"],
        )


async def insert(
    conn: asyncpg.Connection,
    model_id: str,
    model_name: str,
    params: dict[str, Any],
    model_info: dict[str, Any],
) -> ModelRow:
    """A new row (``asyncpg.UniqueViolationError`` when ``model_id`` is taken)."""
    row = await conn.fetchrow(
        f"INSERT INTO model_deployments (id, model_name, params, model_info, created_at, updated_at) "
        f"VALUES ($1, $2, $3, $4, clock_timestamp(), clock_timestamp()) RETURNING {_COLUMNS}",
        model_id,
        model_name,
        params,
        model_info,
    )
    assert row is not None
    return ModelRow.from_record(row)


async def get(conn: asyncpg.Connection, model_id: str, *, for_update: bool = False) -> ModelRow | None:
    lock = " FOR UPDATE" if for_update else ""
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM model_deployments WHERE id = $1{lock}", model_id)
    return None if row is None else ModelRow.from_record(row)


async def update(
    conn: asyncpg.Connection,
    model_id: str,
    model_name: str,
    params: dict[str, Any],
    model_info: dict[str, Any],
) -> ModelRow | None:
    row = await conn.fetchrow(
        f"UPDATE model_deployments SET model_name = $2, params = $3, model_info = $4, "
        f"updated_at = clock_timestamp() WHERE id = $1 RETURNING {_COLUMNS}",
        model_id,
        model_name,
        params,
        model_info,
    )
    return None if row is None else ModelRow.from_record(row)


async def delete(conn: asyncpg.Connection, model_id: str) -> ModelRow | None:
    row = await conn.fetchrow(f"DELETE FROM model_deployments WHERE id = $1 RETURNING {_COLUMNS}", model_id)
    return None if row is None else ModelRow.from_record(row)


async def list_all(conn: asyncpg.Connection) -> list[ModelRow]:
    rows = await conn.fetch(f"SELECT {_COLUMNS} FROM model_deployments ORDER BY created_at, id")
    return [ModelRow.from_record(r) for r in rows]


async def fingerprint(conn: asyncpg.Connection) -> str:
    """A digest of every row's id and ``updated_at``: equal digests, same rows (a read of
    two columns of a table of tens to hundreds of rows)."""
    value = await conn.fetchval(
        "SELECT coalesce(md5(string_agg(id || '@' || updated_at::text, ',' ORDER BY id)), '') "
        "FROM model_deployments"
    )
    return str(value)
