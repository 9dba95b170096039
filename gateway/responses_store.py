"""Stored Responses API answers in Postgres (``stored_responses``): save, read, delete, chain, expire.

A row is one ``response`` object with the input items that produced it, owned by a ``scope``
(the caller's team, else its key): every read and delete filters on it, so another team's id is
simply not found. Rows live ``general_settings.responses_retention_days``; an expired row is
never served (every query checks ``expires_at``) and is deleted by a purge that saving starts at
most once per ``PURGE_EVERY_S`` (no separate task to run or stop).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from gateway.db.outage import DatabaseUnavailable

if TYPE_CHECKING:
    from gateway.db.guarded_pool import GuardedPool
    from gateway.pipeline import Principal

log = logging.getLogger(__name__)

PURGE_EVERY_S = 3600.0
# A previous_response_id chain longer than this is cut (its oldest turns dropped).
MAX_CHAIN = 1000

_CHAIN_SQL = """
WITH RECURSIVE chain AS (
    SELECT previous_response_id, input_items, response -> 'output' AS output, 0 AS depth
    FROM stored_responses WHERE id = $1 AND scope = $2 AND expires_at > now()
    UNION ALL
    SELECT s.previous_response_id, s.input_items, s.response -> 'output', c.depth + 1
    FROM stored_responses s JOIN chain c ON s.id = c.previous_response_id
    WHERE s.scope = $2 AND s.expires_at > now() AND c.depth < $3
)
SELECT input_items, output FROM chain ORDER BY depth DESC
"""


def scope_of(principal: Principal) -> str:
    """Who owns what this caller stores: its team, else its key, else the caller kind (master, local)."""
    if principal.team_id:
        return f"team:{principal.team_id}"
    if principal.key_hash:
        return f"key:{principal.key_hash}"
    return principal.kind


@dataclass(slots=True)
class StoredResponse:
    input_items: list[dict[str, Any]]
    response: dict[str, Any]


class ResponseStore:
    def __init__(self, pool: GuardedPool, retention_days: float) -> None:
        self._pool = pool
        self._retention = timedelta(days=retention_days)
        self._last_purge = 0.0
        self._purging: asyncio.Task[int] | None = None

    async def save(self, scope: str, input_items: list[dict[str, Any]], response: dict[str, Any]) -> None:
        now = datetime.now(UTC)
        await self._pool.execute(
            "INSERT INTO stored_responses (id, scope, previous_response_id, input_items, response,"
            " created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            response["id"],
            scope,
            response.get("previous_response_id"),
            input_items,
            response,
            now,
            now + self._retention,
        )
        self._maybe_purge()

    async def get(self, scope: str, response_id: str) -> StoredResponse | None:
        row = await self._pool.fetchrow(
            "SELECT input_items, response FROM stored_responses"
            " WHERE id = $1 AND scope = $2 AND expires_at > now()",
            response_id,
            scope,
        )
        return None if row is None else StoredResponse(row["input_items"], row["response"])

    async def delete(self, scope: str, response_id: str) -> bool:
        deleted = await self._pool.fetchval(
            "DELETE FROM stored_responses WHERE id = $1 AND scope = $2 AND expires_at > now() RETURNING id",
            response_id,
            scope,
        )
        return deleted is not None

    async def conversation(self, scope: str, response_id: str) -> list[dict[str, Any]] | None:
        """Every item of the chain ending at ``response_id``, oldest first: each turn's input, then
        its output. None when ``response_id`` itself is not found (an expired or deleted older
        link just ends the chain there)."""
        rows = await self._pool.fetch(_CHAIN_SQL, response_id, scope, MAX_CHAIN)
        if not rows:
            return None
        items: list[dict[str, Any]] = []
        for row in rows:
            items += row["input_items"]
            items += row["output"] or []
        return items

    async def purge_expired(self) -> int:
        status = await self._pool.execute("DELETE FROM stored_responses WHERE expires_at <= now()")
        return int(status.rsplit(" ", 1)[-1])

    def _maybe_purge(self) -> None:
        now = time.monotonic()
        if now - self._last_purge < PURGE_EVERY_S or (self._purging and not self._purging.done()):
            return
        self._last_purge = now
        self._purging = asyncio.get_running_loop().create_task(self._purge_quietly())

    async def _purge_quietly(self) -> int:
        try:
            return await self.purge_expired()
        except DatabaseUnavailable:
            return 0  # the next save tries again after PURGE_EVERY_S
        except Exception:
            log.exception("purging expired stored responses failed")
            return 0
