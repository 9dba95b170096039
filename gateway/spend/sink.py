"""``SpendSink`` for Postgres: O(1) enqueue on the request path, batched exactly-once writes behind it.

Each batch is one transaction:
  1. insert the log rows (one ``INSERT ... SELECT FROM jsonb_to_recordset``, the whole batch as one jsonb
     parameter); ``ON CONFLICT DO NOTHING`` on the row id makes a retried batch idempotent (ids are
     assigned at enqueue time),
  2. charge only the rows that were actually inserted: one ``spend = spend + x`` per key, team and user,
     after locking those rows in sorted id order so instances flushing concurrently cannot deadlock,
  3. upsert the daily aggregates (also in sorted order).
Each periodic tick writes what was queued when it started (``flush``), so under load the writer makes one
batch per interval rather than a stream of tiny ones. A failed batch is rolled back and put back at the front
of the queue; ``close`` flushes everything.

Outages and crashes. While Postgres is unreachable the queue keeps growing, up to ``max_queue`` records
(beyond that the oldest are dropped, counted and logged); the flusher retries each tick and the database
circuit logs the outage, so nothing is logged per failed tick. With a ``SpendJournal`` every queued record
is also appended to a local write-ahead file, released once committed; ``replay`` writes the journals of
killed processes at start (the row ids make that idempotent).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from gateway.db.guarded_pool import GuardedPool
from gateway.db.outage import DatabaseUnavailable, LogThrottle
from gateway.pipeline import UsageEvent
from gateway.spend import request_log
from gateway.spend.journal import SpendJournal
from gateway.spend.metrics import BATCH_FAILURES, BATCH_SECONDS, count_batch, watch_backlog
from gateway.spend.prices import PriceTable
from gateway.spend.webhook import WebhookLogger

log = logging.getLogger(__name__)

_CENT_FRACTION = Decimal("1e-12")  # the scale of NUMERIC(24, 12) columns
_NO_COST = Decimal(0).quantize(_CENT_FRACTION)

# The whole batch is one jsonb parameter, not 21 typed arrays: asyncpg checks every array element
# against collections.abc (Iterable, Sized, Mapping) in Python before encoding it, which cost more CPU
# than the rest of the request's path together. The JSON is built by orjson in one call.
_INSERT_LOGS = """
INSERT INTO spend_logs (id, request_id, key_hash, team_id, user_id, model, deployment_id, provider_model,
                        prompt_tokens, completion_tokens, total_tokens, spend, status, cache_hit, stream,
                        error_code, start_time, end_time, metadata, operation, end_user)
SELECT * FROM jsonb_to_recordset($1::jsonb) AS r(
    id text, request_id text, key_hash text, team_id text, user_id text, model text, deployment_id text,
    provider_model text, prompt_tokens int, completion_tokens int, total_tokens int, spend numeric,
    status text, cache_hit bool, stream bool, error_code text, start_time timestamptz,
    end_time timestamptz, metadata jsonb, operation text, end_user text)
ON CONFLICT (id) DO NOTHING
RETURNING id
"""

# (table, primary key column, resolver kind)
_ENTITIES = (("virtual_keys", "token_hash", "key"), ("teams", "id", "team"), ("users", "id", "user"))

# A team's charge also goes to its organization (locked in id order, after the teams).
_LOCK_ORGS = """
SELECT 1 FROM organizations WHERE id IN (SELECT organization_id FROM teams WHERE id = ANY($1::text[]))
ORDER BY id FOR UPDATE
"""
_CHARGE_ORGS = """
UPDATE organizations AS o SET spend = o.spend + v.amount
FROM (SELECT t.organization_id AS id, sum(x.amount) AS amount
      FROM unnest($1::text[], $2::numeric[]) AS x(id, amount) JOIN teams t ON t.id = x.id
      WHERE t.organization_id IS NOT NULL GROUP BY t.organization_id) AS v
WHERE o.id = v.id RETURNING o.id, o.spend
"""
# Customers are created by their first charge, as LiteLLM upserts its end users (sorted: no deadlocks).
_CHARGE_CUSTOMERS = """
INSERT INTO customers AS c (id, spend) SELECT * FROM unnest($1::text[], $2::numeric[])
ON CONFLICT (id) DO UPDATE SET spend = c.spend + EXCLUDED.spend RETURNING c.id, c.spend
"""

_UPSERT_DAILY = """
INSERT INTO daily_spend (day, key_hash, team_id, user_id, model, requests, failed_requests, prompt_tokens,
                         completion_tokens, spend)
SELECT * FROM unnest($1::date[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int[], $7::int[],
                     $8::bigint[], $9::bigint[], $10::numeric[])
ON CONFLICT (day, key_hash, team_id, user_id, model) DO UPDATE SET
    requests = daily_spend.requests + EXCLUDED.requests,
    failed_requests = daily_spend.failed_requests + EXCLUDED.failed_requests,
    prompt_tokens = daily_spend.prompt_tokens + EXCLUDED.prompt_tokens,
    completion_tokens = daily_spend.completion_tokens + EXCLUDED.completion_tokens,
    spend = daily_spend.spend + EXCLUDED.spend
"""


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


class PostgresSpendSink:
    """Queues ``UsageEvent``s and writes them to Postgres in batches (see module docstring)."""

    def __init__(
        self,
        pool: GuardedPool,
        prices: PriceTable | None = None,
        *,
        flush_interval: float = 1.0,
        batch_size: int = 500,
        max_queue: int = 100_000,
        on_charged: Callable[[str, str, float], None] | None = None,
        journal: SpendJournal | None = None,
        json_logs: bool = False,
        webhook: WebhookLogger | None = None,
    ) -> None:
        self._webhook = webhook
        self._pool = pool
        self._json_logs = json_logs
        if json_logs:
            request_log.enable()
        self._journal = journal
        self._prices = prices or PriceTable()
        self._interval = flush_interval
        self._batch_size = batch_size
        self._max_queue = max_queue
        self._on_charged = on_charged
        self._queue: deque[tuple[str, UsageEvent]] = deque()
        # Row ids: a random per-process prefix plus a counter; unique across instances, cheap to make.
        self._prefix = secrets.token_hex(6) + "-"
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._flush_lock = asyncio.Lock()
        self._closed = False
        self.rows_written = 0
        self.dropped = 0
        self.failed_flushes = 0
        self._drop_log = LogThrottle(10.0)

    # -- the request path -------------------------------------------------------------------------
    def record(self, event: UsageEvent) -> None:
        """Queue an event (O(1), never awaits)."""
        queue = self._queue
        row_id = self._prefix + str(next(self._seq))
        queue.append((row_id, event))
        if self._journal is not None:
            self._journal.append(row_id, event)
        if len(queue) >= self._batch_size:
            self._wake.set()
            if len(queue) > self._max_queue:  # the database has been away for a long time
                self._drop_oldest()

    def _drop_oldest(self) -> None:
        self._queue.popleft()
        self.dropped += 1
        if self._journal is not None:
            self._journal.release(1)
        if self._drop_log.due():
            log.error(
                "spend buffer full (%d records): dropping the oldest; %d dropped so far",
                self._max_queue,
                self.dropped,
            )

    @property
    def pending(self) -> int:
        return len(self._queue)

    # -- background -------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the periodic flusher and the journal writer (needs a running event loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="spend-flusher")
            watch_backlog(lambda: len(self._queue))
            if self._webhook is not None:
                self._webhook.start()
        if self._journal is not None:
            self._journal.start()

    async def _run(self) -> None:
        while not self._closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            try:
                await self.flush()
            except DatabaseUnavailable:  # kept in the queue; the circuit has logged the outage
                await asyncio.sleep(min(5.0, self._interval))
            except Exception as exc:  # kept in the queue; retried next tick
                log.warning("spend flush failed (%d events kept for retry): %s", self.pending, exc)
                await asyncio.sleep(min(5.0, self._interval))

    async def flush(self) -> int:
        """Write what is queued when the flush starts, in batches; returns the log rows inserted.

        Events recorded while the batches are being written wait for the next tick: looping until the
        queue is empty would, under steady load, keep the writer busy with a stream of tiny batches
        (one transaction per handful of requests) instead of one batch per interval. Raises on failure,
        with the failed batch and everything after it still queued, in order.
        """
        written = 0
        async with self._flush_lock:
            remaining = len(self._queue)  # snapshot under the lock: the events this flush owns
            while remaining > 0 and self._queue:
                n = min(self._batch_size, remaining, len(self._queue))
                batch = [self._queue.popleft() for _ in range(n)]
                try:
                    with BATCH_SECONDS.time():
                        written += await self._write(batch)
                except BaseException:
                    self.failed_flushes += 1
                    BATCH_FAILURES.inc()
                    self._queue.extendleft(reversed(batch))  # back at the front, order kept
                    raise
                if self._journal is not None:
                    self._journal.release(n)
                remaining -= n
        return written

    async def flush_all(self) -> int:
        """Flush until the queue is empty (shutdown and tests); raises on failure like ``flush``."""
        written = 0
        while self._queue:
            written += await self.flush()
        return written

    async def close(self) -> None:
        """Stop the flusher and flush everything queued (retrying a few times)."""
        self._closed = True
        if self._task is not None:
            self._wake.set()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for attempt in range(5):
            try:
                await self.flush_all()
                break
            except Exception as exc:
                log.warning("final spend flush attempt %d failed: %s", attempt + 1, exc)
                await asyncio.sleep(0.2 * (attempt + 1))
        if self._webhook is not None:
            await self._webhook.close()
        if self._journal is not None:
            await self._journal.close()  # keeps the files if anything is still uncommitted
        if self._queue:
            where = "kept in the journal for the next start" if self._journal is not None else "lost"
            log.error("spend: %d events could not be written at shutdown (%s)", len(self._queue), where)

    async def replay(self, records: Iterable[tuple[str, UsageEvent]]) -> int:
        """Write records journaled by an earlier process, in batches; ids already stored are skipped.

        Returns the log rows inserted; raises (after writing some batches, maybe) like ``flush``.
        """
        written = 0
        batch: list[tuple[str, UsageEvent]] = []
        for record in records:
            batch.append(record)
            if len(batch) >= self._batch_size:
                written += await self._write(batch)
                batch = []
        if batch:
            written += await self._write(batch)
        return written

    # -- the batch transaction --------------------------------------------------------------------
    def _cost(self, event: UsageEvent) -> Decimal:
        cost = event.cost
        if not cost and event.status == "success" and not event.cache_hit:
            cost = self._prices.cost(
                deployment_id=event.deployment_id,
                provider_model=event.provider_model,
                model=event.model,
                usage=event.usage,
            )
        if not cost:
            return _NO_COST  # most rows of a batch when models are unpriced or answers cached
        return Decimal(cost).quantize(_CENT_FRACTION)

    async def _write(self, batch: list[tuple[str, UsageEvent]]) -> int:
        costs = [self._cost(e) for _, e in batch]
        rows: list[dict[str, Any]] = []
        for (row_id, e), cost in zip(batch, costs, strict=True):
            p, u = e.principal, e.usage
            rows.append(
                {
                    "id": row_id,
                    "request_id": e.request_id,
                    "key_hash": p.key_hash,
                    "team_id": p.team_id,
                    "user_id": p.user_id,
                    "model": e.model,
                    "deployment_id": e.deployment_id,
                    "provider_model": e.provider_model,
                    "prompt_tokens": u.prompt_tokens,
                    "completion_tokens": u.completion_tokens,
                    "total_tokens": u.total_tokens,
                    "spend": str(cost),  # exact: a JSON string is read with numeric's own input
                    "status": e.status,
                    "cache_hit": e.cache_hit,
                    "stream": e.stream,
                    "error_code": e.error_code,
                    "start_time": _utc(e.started_at),
                    "end_time": _utc(e.ended_at),
                    "metadata": e.metadata,
                    "operation": e.operation,
                    "end_user": e.end_user,
                }
            )
        charged: list[tuple[str, str, float]] = []
        async with self._pool.acquire() as conn, conn.transaction():
            inserted = {r["id"] for r in await conn.fetch(_INSERT_LOGS, rows)}
            amounts: dict[str, dict[str, Decimal]] = {
                kind: defaultdict(Decimal) for kind in ("key", "team", "user", "customer")
            }
            daily: dict[tuple[date, str, str, str, str], list[Any]] = {}
            for (row_id, e), cost, row in zip(batch, costs, rows, strict=True):
                if row_id not in inserted:
                    continue  # already written by an earlier attempt whose commit we did not see
                p = e.principal
                for kind, entity in (
                    ("key", p.key_hash),
                    ("team", p.team_id),
                    ("user", p.user_id),
                    ("customer", e.end_user),
                ):
                    if entity is not None:
                        amounts[kind][entity] += cost
                group = (
                    row["start_time"].date(),
                    p.key_hash or "",
                    p.team_id or "",
                    p.user_id or "",
                    e.model,
                )
                agg = daily.setdefault(group, [0, 0, 0, 0, Decimal(0)])
                agg[0] += 1
                agg[1] += e.status != "success"
                agg[2] += e.usage.prompt_tokens
                agg[3] += e.usage.completion_tokens
                agg[4] += cost
            for table, pk, kind in _ENTITIES:
                ids = sorted(amounts[kind])
                if not ids:
                    continue
                # Lock in sorted order first: concurrent batches then always queue in the same order.
                await conn.execute(
                    f"SELECT 1 FROM {table} WHERE {pk} = ANY($1::text[]) ORDER BY {pk} FOR UPDATE", ids
                )
                rows = await conn.fetch(
                    f"UPDATE {table} AS t SET spend = t.spend + v.amount "
                    f"FROM unnest($1::text[], $2::numeric[]) AS v(id, amount) WHERE t.{pk} = v.id "
                    f"RETURNING t.{pk} AS id, t.spend",
                    ids,
                    [amounts[kind][i] for i in ids],
                )
                charged += [(kind, r["id"], float(r["spend"])) for r in rows]
                if kind == "team":
                    await conn.execute(_LOCK_ORGS, ids)
                    rows = await conn.fetch(_CHARGE_ORGS, ids, [amounts[kind][i] for i in ids])
                    charged += [("org", r["id"], float(r["spend"])) for r in rows]
            customers = sorted(amounts["customer"])
            if customers:
                rows = await conn.fetch(
                    _CHARGE_CUSTOMERS, customers, [amounts["customer"][c] for c in customers]
                )
                charged += [("customer", r["id"], float(r["spend"])) for r in rows]
            if daily:
                groups = sorted(daily)
                dcols: list[list[Any]] = [[] for _ in range(10)]
                for g in groups:
                    for col, value in zip(dcols, (*g, *daily[g]), strict=True):
                        col.append(value)
                await conn.execute(_UPSERT_DAILY, *dcols)
        self.rows_written += len(inserted)
        written = [(e, cost) for (row_id, e), cost in zip(batch, costs, strict=True) if row_id in inserted]
        count_batch(written)
        if self._json_logs:
            request_log.write(written)
        if self._webhook is not None:
            self._webhook.submit([request_log.record(e, cost) for e, cost in written])
        if self._on_charged is not None:
            for kind, entity, spend in charged:
                self._on_charged(kind, entity, spend)
        return len(inserted)
