"""The control plane at run time: database, key resolver, spend sink and budget resets, started together."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from gateway.db.database import Database, open_database
from gateway.keys.resolver import PostgresKeyResolver
from gateway.spend.budget_reset import BudgetResetter
from gateway.spend.prices import PriceTable
from gateway.spend.sink import PostgresSpendSink

log = logging.getLogger(__name__)


@dataclass
class ControlPlane:
    """What the app needs from Postgres. ``master_key`` None means local mode (no key required)."""

    db: Database
    resolver: PostgresKeyResolver
    sink: PostgresSpendSink
    resetter: BudgetResetter
    master_key: str | None

    @classmethod
    async def open(cls, config: Any, *, start_background: bool = True) -> ControlPlane:
        """Connect (or start the embedded server), migrate, and start the flusher and budget resets.

        ``config`` is a ``gateway.config.GatewayConfig``.
        """
        settings = config.general_settings
        db = await open_database(settings.database_url, config.data_dir)
        resolver = PostgresKeyResolver(db.pool)

        def on_reset(kind: str, entity: str) -> None:
            resolver.apply_spend(kind, entity, 0.0)

        sink = PostgresSpendSink(
            db.pool,
            PriceTable.from_config(config),
            flush_interval=settings.spend_flush_interval_s,
            batch_size=settings.spend_batch_size,
            on_charged=resolver.apply_spend,
        )
        resetter = BudgetResetter(db.pool, on_reset=on_reset)
        plane = cls(db=db, resolver=resolver, sink=sink, resetter=resetter, master_key=settings.master_key)
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
