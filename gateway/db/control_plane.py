"""The control plane at run time: database, key resolver, spend sink and budget resets, started together.

At start, spend journals left by killed processes (``data_dir/spend-journal``) are written to Postgres
before this process starts its own journal.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.db.database import Database, open_database
from gateway.keys.customers import CustomerResolver, DefaultBudget
from gateway.keys.resolver import PostgresKeyResolver
from gateway.spend.budget_reset import BudgetResetter
from gateway.spend.journal import SpendJournal, orphan_journals
from gateway.spend.prices import PriceTable
from gateway.spend.sink import PostgresSpendSink
from gateway.spend.webhook import WebhookLogger

log = logging.getLogger(__name__)


@dataclass
class ControlPlane:
    """What the app needs from Postgres. ``master_key`` None means local mode (no key required)."""

    db: Database
    resolver: PostgresKeyResolver
    sink: PostgresSpendSink
    resetter: BudgetResetter
    master_key: str | None
    customers: CustomerResolver

    @classmethod
    async def open(cls, config: Any, *, start_background: bool = True) -> ControlPlane:
        """Connect (or start the embedded server), migrate, and start the flusher and budget resets.

        ``config`` is a ``gateway.config.GatewayConfig``.
        """
        settings = config.general_settings
        db = await open_database(
            settings.database_url, config.data_dir, connect_timeout=settings.database_timeout_s
        )
        resolver = PostgresKeyResolver(
            db.pool, ttl=settings.key_cache_ttl_s, stale_ttl=settings.key_cache_stale_ttl_s
        )

        customers = CustomerResolver(
            db.pool,
            ttl=settings.key_cache_ttl_s,
            stale_ttl=settings.key_cache_stale_ttl_s,
            default=DefaultBudget(settings.max_end_user_budget, settings.max_end_user_budget_id),
        )

        def on_charged(kind: str, entity: str, spend: float) -> None:
            resolver.apply_spend(kind, entity, spend)
            customers.apply_spend(kind, entity, spend)

        def on_reset(kind: str, entity: str) -> None:
            on_charged(kind, entity, 0.0)

        journal_dir = config.data_dir / "spend-journal"
        journal = (
            _open_journal(
                journal_dir,
                settings.spend_journal_interval_ms / 1000,
                settings.spend_journal_fsync_interval_ms / 1000,
            )
            if settings.spend_journal
            else None
        )
        sink = PostgresSpendSink(
            db.pool,
            PriceTable.from_config(config),
            flush_interval=settings.spend_flush_interval_s,
            batch_size=settings.spend_batch_size,
            max_queue=settings.spend_buffer_max_records,
            on_charged=on_charged,
            journal=journal,
            json_logs=settings.json_logs,
            webhook=WebhookLogger(settings.webhook_url) if settings.webhook_url else None,
        )
        # Also with the journal off now (it may have been on before). This process's own journal is
        # locked, so it is never taken for an orphan.
        await _replay_orphans(journal_dir, sink)
        resetter = BudgetResetter(db.pool, on_reset=on_reset)
        plane = cls(
            db=db,
            resolver=resolver,
            sink=sink,
            resetter=resetter,
            master_key=settings.master_key,
            customers=customers,
        )
        if start_background:
            plane.start()
        return plane

    def start(self) -> None:
        self.sink.start()
        self.resetter.start()

    async def close(self) -> None:
        """Flush spend, stop background tasks, close the pool (and stop the embedded server)."""
        await self.resetter.close()
        await self.sink.close()
        await self.db.close()


async def _replay_orphans(directory: Path, sink: PostgresSpendSink) -> None:
    """Write the spend journaled by processes that died (SIGKILL, crash) and delete their journals."""
    for orphan in orphan_journals(directory):
        try:
            written = await sink.replay(orphan.records())
        except Exception as exc:
            orphan.release()  # kept on disk: the next start tries again
            log.error(
                "spend journal %s could not be replayed (%s); kept for the next start", orphan.name, exc
            )
            continue
        orphan.remove()
        log.warning(
            "replayed spend journal %s of a process that stopped without flushing: %d record(s) written, "
            "%d torn line(s) skipped",
            orphan.name,
            written,
            orphan.torn_lines,
        )


def _open_journal(directory: Path, interval: float, fsync_interval: float) -> SpendJournal | None:
    try:
        return SpendJournal(directory, interval=interval, fsync_interval=fsync_interval)
    except OSError as exc:
        log.error("spend journal disabled (%s): a crash may lose the spend queued in memory", exc)
        return None
