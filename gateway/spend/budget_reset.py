"""Reset spend when a budget period ends; safe with many gateway instances running it at once.

Each pass takes due rows with ``FOR UPDATE SKIP LOCKED`` (an instance never waits on, or double-resets,
a row another instance is resetting) and moves ``budget_reset_at`` forward in the same transaction, so a
row is due again only after its next period.

A ``budgets`` row with a ``budget_duration`` resets, when due, the spend of everything linked to it
that has no period of its own (customers and organizations never have one; keys, teams and users
whose own ``budget_duration`` is unset), as LiteLLM's budget reset job does for its budget table.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from gateway.db.guarded_pool import GuardedPool
from gateway.db.outage import DatabaseUnavailable
from gateway.keys.durations import parse_duration

log = logging.getLogger(__name__)

_TABLES = (("virtual_keys", "token_hash", "key"), ("teams", "id", "team"), ("users", "id", "user"))
# What a budget row's period resets: (table, primary key, resolver kind, whether it has its own period).
_LINKED = (
    ("virtual_keys", "token_hash", "key", True),
    ("teams", "id", "team", True),
    ("users", "id", "user", True),
    ("customers", "id", "customer", False),
    ("organizations", "id", "org", False),
)


def _next(row: Any, now: datetime, kind: str) -> datetime | None:
    """The reset after ``now`` (whole periods missed while no gateway ran are skipped), or None when
    the row's ``budget_duration`` cannot be read."""
    try:
        period = parse_duration(row["budget_duration"])
    except ValueError:
        log.warning("%s %s has an invalid budget_duration %r", kind, row["id"], row["budget_duration"])
        return None
    nxt: datetime = row["budget_reset_at"]
    while nxt <= now:
        nxt += period
    return nxt


async def reset_due_budgets(
    pool: GuardedPool,
    *,
    now: datetime | None = None,
    limit: int = 1000,
    on_reset: Callable[[str, str], None] | None = None,
) -> int:
    """Zero the spend of every key/team/user whose budget period ended; returns how many were reset."""
    now = now or datetime.now(UTC)
    total = 0
    for table, pk, kind in _TABLES:
        async with pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                f"SELECT {pk} AS id, budget_duration, budget_reset_at FROM {table} "
                f"WHERE budget_reset_at <= $1 AND budget_duration IS NOT NULL "
                f"ORDER BY {pk} LIMIT $2 FOR UPDATE SKIP LOCKED",
                now,
                limit,
            )
            ids, next_resets = [], []
            for row in rows:
                nxt = _next(row, now, kind)
                if nxt is not None:
                    ids.append(row["id"])
                    next_resets.append(nxt)
            if ids:
                await conn.execute(
                    f"UPDATE {table} AS t SET spend = 0, budget_reset_at = v.next_reset, updated_at = now() "
                    f"FROM unnest($1::text[], $2::timestamptz[]) AS v(id, next_reset) WHERE t.{pk} = v.id",
                    ids,
                    next_resets,
                )
        if on_reset is not None:
            for entity in ids:
                on_reset(kind, entity)
        total += len(ids)
    return total + await _reset_budget_rows(pool, now, limit, on_reset)


async def _reset_budget_rows(
    pool: GuardedPool, now: datetime, limit: int, on_reset: Callable[[str, str], None] | None
) -> int:
    """Zero the spend of what is linked to each due ``budgets`` row; returns how many were reset."""
    reset: list[tuple[str, str]] = []
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            "SELECT id, budget_duration, budget_reset_at FROM budgets "
            "WHERE budget_reset_at <= $1 AND budget_duration IS NOT NULL "
            "ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED",
            now,
            limit,
        )
        ids, next_resets = [], []
        for row in rows:
            nxt = _next(row, now, "budget")
            if nxt is not None:
                ids.append(row["id"])
                next_resets.append(nxt)
        if not ids:
            return 0
        for table, pk, kind, own_period in _LINKED:
            unset = " AND budget_duration IS NULL" if own_period else ""
            # Rows locked in id order first, as the spend writer locks them: the two never deadlock.
            await conn.execute(
                f"SELECT 1 FROM {table} WHERE budget_id = ANY($1::text[]){unset} ORDER BY {pk} FOR UPDATE",
                ids,
            )
            done = await conn.fetch(
                f"UPDATE {table} SET spend = 0, updated_at = now() "
                f"WHERE budget_id = ANY($1::text[]){unset} RETURNING {pk} AS id",
                ids,
            )
            reset += [(kind, r["id"]) for r in done]
        await conn.execute(
            "UPDATE budgets AS b SET budget_reset_at = v.next_reset, updated_at = now() "
            "FROM unnest($1::text[], $2::timestamptz[]) AS v(id, next_reset) WHERE b.id = v.id",
            ids,
            next_resets,
        )
    if on_reset is not None:
        for kind, entity in reset:
            on_reset(kind, entity)
    return len(reset)


class BudgetResetter:
    """Runs ``reset_due_budgets`` every ``interval`` seconds in the background."""

    def __init__(
        self,
        pool: GuardedPool,
        *,
        interval: float = 30.0,
        on_reset: Callable[[str, str], None] | None = None,
    ) -> None:
        self._pool = pool
        self._interval = interval
        self._on_reset = on_reset
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="budget-reset")

    async def _run(self) -> None:
        while True:
            try:
                n = await reset_due_budgets(self._pool, on_reset=self._on_reset)
                if n:
                    log.info("reset %d budget(s)", n)
            except DatabaseUnavailable:
                pass  # the database circuit logs the outage; the next pass catches up
            except Exception as exc:
                log.warning("budget reset pass failed: %s", exc)
            await asyncio.sleep(self._interval)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
