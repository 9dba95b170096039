"""Postgres stopped under a running gateway, then started again (a private server, not the shared one).

During the outage: a key seen recently keeps working from the cache (its entry has expired, so this is
the stale path), an unknown key and an admin write get an OpenAI-shaped 503, readiness reports the
database, the log says it a few times (not once per request, no tracebacks). After: the buffered spend is
written, one row per response received.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import openai
import pytest

from gateway.db.embedded import EmbeddedPostgres
from tests.control_plane.conftest import MASTER_KEY, UNIT_COST, gateway_config
from tests.support.fake_openai import FakeOpenAI
from tests.support.gateway_process import GatewayProcess, gateway_process

# Cached key entries expire after this long, so every request during the outage needs the database
# (or the stale entry): what the old gateway answered with a 500.
KEY_TTL_S = 0.2


@pytest.fixture
def private_postgres() -> Iterator[EmbeddedPostgres]:
    with tempfile.TemporaryDirectory(prefix="switchyard-outage-pg-") as tmp:
        server = EmbeddedPostgres(Path(tmp))
        server.start()
        try:
            yield server
        finally:
            server.stop()


def _admin(gw: GatewayProcess, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        gw.base_url + path, json=body, headers={"Authorization": f"Bearer {MASTER_KEY}"}, timeout=30
    )


def _readiness(gw: GatewayProcess) -> httpx.Response:
    return httpx.get(gw.base_url + "/health/readiness", timeout=10)


def _chat(client: openai.OpenAI, i: int, *, stream: bool = False) -> None:
    if stream:
        chunks = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": f"outage {i}"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        assert [c for c in chunks if c.usage is not None]
    else:
        reply = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"outage {i}"}]
        )
        assert reply.choices[0].message.content


def _assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "database_unavailable"
    assert error["type"] == "service_unavailable"
    assert "database" in error["message"]
    assert response.headers["retry-after"] == "1"


def _wait_until(check: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for: {what}"
        time.sleep(0.1)


async def _spend_of(url: str, key_hash: str) -> tuple[int, Any, Any]:
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS n, sum(spend) AS total FROM spend_logs WHERE key_hash = $1", key_hash
        )
        charged = await conn.fetchval("SELECT spend FROM virtual_keys WHERE token_hash = $1", key_hash)
        return row["n"], row["total"], charged
    finally:
        await conn.close()


def test_known_keys_keep_working_and_spend_is_kept_through_a_postgres_outage(
    fake_upstream: FakeOpenAI, private_postgres: EmbeddedPostgres
) -> None:
    url = private_postgres.url
    config = gateway_config(fake_upstream.base_url)
    config["general_settings"]["key_cache_ttl_s"] = KEY_TTL_S
    with gateway_process(config, env={"DATABASE_URL": url}) as gw:
        created = _admin(gw, "/key/generate", {})
        assert created.status_code == 200, created.text
        key, key_hash = created.json()["key"], created.json()["token"]
        client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key=key, max_retries=0)
        responses = 0
        for i in range(5):
            _chat(client, i)
            responses += 1
        ready = _readiness(gw)
        assert ready.status_code == 200
        assert ready.json()["status"] == "healthy" and ready.json()["database"] == "reachable"

        private_postgres.stop()
        time.sleep(KEY_TTL_S * 2)  # the key's cache entry has expired: each request must refresh it

        for i in range(40):
            _chat(client, 100 + i, stream=i % 4 == 0)
            responses += 1

        unknown = httpx.post(
            gw.base_url + "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": "Bearer sk-never-seen-before"},
            timeout=30,
        )
        _assert_unavailable(unknown)
        _assert_unavailable(_admin(gw, "/key/generate", {}))

        ready = _readiness(gw)
        assert ready.status_code == 200, ready.text
        assert ready.json()["status"] == "degraded"
        assert ready.json()["database"] == "unreachable"
        assert ready.json()["spend_buffered"] >= 1
        assert httpx.get(gw.base_url + "/health/liveliness", timeout=10).status_code == 200

        during = gw.logs()
        assert "Traceback" not in during, during
        outage_lines = [line for line in during.splitlines() if "database" in line and "unreachable" in line]
        assert 1 <= len(outage_lines) <= 5, during

        private_postgres.start()  # same port: the gateway's DATABASE_URL is valid again
        _wait_until(lambda: _readiness(gw).json().get("database") == "reachable", "readiness: database back")
        assert _readiness(gw).json()["status"] == "healthy"
        _chat(client, 1000)
        responses += 1
        assert _admin(gw, "/key/generate", {}).status_code == 200

        def all_rows_written() -> bool:
            return asyncio.run(_spend_of(url, key_hash))[0] >= responses

        _wait_until(all_rows_written, "spend rows for every response")
        assert "reachable again" in gw.logs()
    rows, total, charged = asyncio.run(_spend_of(url, key_hash))
    assert rows == responses
    assert total == charged == UNIT_COST * responses


def test_spend_buffered_during_an_outage_survives_a_sigterm_and_is_written_at_the_next_start(
    fake_upstream: FakeOpenAI, private_postgres: EmbeddedPostgres, tmp_path: Path
) -> None:
    url = private_postgres.url
    config = gateway_config(fake_upstream.base_url)
    config["general_settings"].update(key_cache_ttl_s=KEY_TTL_S, data_dir=str(tmp_path / "data"))
    with gateway_process(config, env={"DATABASE_URL": url}) as gw:
        created = _admin(gw, "/key/generate", {})
        assert created.status_code == 200, created.text
        key, key_hash = created.json()["key"], created.json()["token"]
        client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key=key, max_retries=0)
        for i in range(3):
            _chat(client, i)
        private_postgres.stop()
        time.sleep(KEY_TTL_S * 2)
        for i in range(10):
            _chat(client, 10 + i)
    # Stopped (SIGTERM) while Postgres was down: the final flush failed, the journal kept the records.
    assert list((tmp_path / "data" / "spend-journal").glob("*.jnl"))
    private_postgres.start()
    with gateway_process(config, env={"DATABASE_URL": url}):
        pass  # the start replays the journal
    rows, total, charged = asyncio.run(_spend_of(url, key_hash))
    assert rows == 13
    assert total == charged == UNIT_COST * 13
