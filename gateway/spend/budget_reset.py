"""Reset spend when a budget period ends; safe with many gateway instances running it at once.

Each pass takes due rows with ``FOR UPDATE SKIP LOCKED`` (an instance never waits on, or double-resets,
a row another instance is resetting) and moves ``budget_reset_at`` forward in the same transaction, so a
row is due again only after its next period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from gateway.db.guarded_pool import GuardedPool
from gateway.db.outage import DatabaseUnavailable
from gateway.keys.durations import parse_duration

log = logging.getLogger(__name__)

_TABLES = (("virtual_keys", "token_hash", "key"), ("teams", "id", "team"), ("users", "id", "user"))


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
                try:
                    period = parse_duration(row["budget_duration"])
                except ValueError:
                    log.warning(
                        "%s %s has an invalid budget_duration %r", kind, row["id"], row["budget_duration"]
                    )
                    continue
                nxt = row["budget_reset_at"]
                while nxt <= now:  # skip whole periods missed while no gateway was running
                    nxt += period
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
    return total


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
