"""SIGKILL under load: the spend journal bounds what a killed gateway loses; it is truncated once committed.

The stated bound (gateway/spend/journal.py, README): a SIGKILL loses at most the spend of requests that
finished within the last journal interval (5 ms) before the kill. The test
checks it with a wide margin (``MARGIN_S``, 100 times the interval) so a slow machine does not fail it:
every response received more than ``MARGIN_S`` before the kill has its spend row, no row is written twice,
and the key is charged exactly the sum of its rows. The Postgres flusher is set to a long interval, so
without the journal the rows would all be lost.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from tests.control_plane.conftest import MASTER_KEY, UNIT_COST, gateway_config
from tests.support.fake_openai import FakeOpenAI
from tests.support.gateway_process import GatewayProcess, gateway_process

MARGIN_S = 0.5
CONCURRENCY = 16
KILL_AFTER = 300  # responses received before the kill


@dataclass
class Load:
    """Requests sent by the load generator: ids sent, and when each response was received."""

    sent: set[str] = field(default_factory=set)
    received: dict[str, float] = field(default_factory=dict)  # request id -> monotonic time received
    stop: threading.Event = field(default_factory=threading.Event)


async def _drive(base_url: str, key: str, load: Load) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "crash test"}]}

    async def worker(client: httpx.AsyncClient) -> None:
        while not load.stop.is_set():
            request_id = uuid.uuid4().hex
            load.sent.add(request_id)
            try:
                response = await client.post(
                    "/v1/chat/completions", json=body, headers={"x-request-id": request_id}
                )
            except httpx.TransportError:
                return  # the gateway is gone
            if response.status_code == 200:
                load.received[request_id] = time.monotonic()

    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30) as client:
        await asyncio.gather(*(worker(client) for _ in range(CONCURRENCY)))


def _admin(gw: GatewayProcess, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(
        gw.base_url + path, json=body, headers={"Authorization": f"Bearer {MASTER_KEY}"}, timeout=30
    )
    assert response.status_code == 200, response.text
    return response.json()


async def _rows(url: str, key_hash: str) -> tuple[list[str], Any, Any]:
    conn = await asyncpg.connect(url)
    try:
        ids = [
            r["request_id"]
            for r in await conn.fetch("SELECT request_id FROM spend_logs WHERE key_hash = $1", key_hash)
        ]
        total = await conn.fetchval("SELECT sum(spend) FROM spend_logs WHERE key_hash = $1", key_hash)
        charged = await conn.fetchval("SELECT spend FROM virtual_keys WHERE token_hash = $1", key_hash)
        return ids, total, charged
    finally:
        await conn.close()


def _segments(journal: Path) -> list[Path]:
    return sorted(journal.glob("*.jnl")) if journal.is_dir() else []


def _wait_until(check: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for: {what}"
        time.sleep(0.05)


def test_sigkill_under_load_loses_at_most_the_last_moments(
    fake_upstream: FakeOpenAI, database_url: str, tmp_path: Path
) -> None:
    config = gateway_config(fake_upstream.base_url)
    data_dir = tmp_path / "data"
    # Nothing reaches Postgres by itself before the kill: only the journal can save these records.
    config["general_settings"].update(
        data_dir=str(data_dir), spend_flush_interval_s=600, spend_batch_size=100_000
    )
    env = {"DATABASE_URL": database_url}
    load = Load()
    with gateway_process(config, env=env) as gw:
        created = _admin(gw, "/key/generate", {})
        key, key_hash = created["key"], created["token"]
        driver = threading.Thread(target=asyncio.run, args=(_drive(gw.base_url, key, load),))
        driver.start()
        try:
            _wait_until(lambda: len(load.received) >= KILL_AFTER, f"{KILL_AFTER} responses")
            # Keep the load on past the margin, so those responses count as settled however fast the
            # machine served them, and the kill still lands mid-load.
            time.sleep(2 * MARGIN_S)
            os.killpg(gw.process.pid, signal.SIGKILL)
            killed_at = time.monotonic()
        finally:
            load.stop.set()
            driver.join(timeout=60)
        gw.process.wait(timeout=10)
    journal = data_dir / "spend-journal"
    assert _segments(journal), "the killed gateway left no journal"
    backup = tmp_path / "journal-backup"
    shutil.copytree(journal, backup)

    with gateway_process(config, env=env):  # same data dir: replays the killed process's journal at start
        ids, total, charged = asyncio.run(_rows(database_url, key_hash))
        assert not _segments(journal), "the replayed journal was not removed"

    settled = {rid for rid, at in load.received.items() if at < killed_at - MARGIN_S}
    assert len(settled) >= KILL_AFTER
    missing = settled - set(ids)
    assert not missing, f"{len(missing)} of {len(settled)} responses sent before the kill have no spend row"
    assert len(ids) == len(set(ids)), "a record was written twice"
    assert set(ids) <= load.sent
    lost = set(load.received) - set(ids)
    recent = {rid for rid, at in load.received.items() if at >= killed_at - MARGIN_S}
    assert lost <= recent
    assert total == charged == UNIT_COST * len(ids)

    # Replaying the same journal again (as if the replaying process had died before deleting it)
    # charges nothing twice: the row ids make it idempotent.
    shutil.rmtree(journal)
    shutil.copytree(backup, journal)
    with gateway_process(config, env=env):
        assert not _segments(journal)
    again_ids, again_total, again_charged = asyncio.run(_rows(database_url, key_hash))
    assert sorted(again_ids) == sorted(ids)
    assert again_total == again_charged == charged


def test_the_journal_is_truncated_once_spend_is_committed(
    fake_upstream: FakeOpenAI, database_url: str, tmp_path: Path
) -> None:
    config = gateway_config(fake_upstream.base_url)
    data_dir = tmp_path / "data"
    config["general_settings"].update(data_dir=str(data_dir), spend_flush_interval_s=0.1)
    journal = data_dir / "spend-journal"
    with gateway_process(config, env={"DATABASE_URL": database_url}) as gw:
        created = _admin(gw, "/key/generate", {})
        load = Load()
        driver = threading.Thread(target=asyncio.run, args=(_drive(gw.base_url, created["key"], load),))
        driver.start()
        try:
            _wait_until(lambda: len(load.received) >= 400, "400 responses")
        finally:
            load.stop.set()
            driver.join(timeout=60)
        received = len(load.received)

        def committed() -> bool:
            return len(asyncio.run(_rows(database_url, created["token"]))[0]) >= received

        _wait_until(committed, "every response's spend row")
        # Everything is in Postgres: the writer closes and deletes its segments.
        _wait_until(lambda: not _segments(journal), "the journal segments to be deleted")
        assert list(journal.glob("*.lock")), "the live journal's lock file is missing"
    # A clean stop leaves nothing behind.
    assert not list(journal.iterdir())
