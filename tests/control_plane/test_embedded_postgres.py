"""With no DATABASE_URL the gateway runs its own PostgreSQL under data_dir, and stops it on exit."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import httpx
import openai

from gateway.db.embedded import _bin_path
from tests.control_plane.conftest import MASTER_KEY, gateway_config
from tests.support.fake_openai import FakeOpenAI
from tests.support.gateway_process import gateway_process


def _postmaster_alive(pgdata: Path) -> bool:
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_embedded_postgres_keeps_keys_across_restarts(fake_upstream: FakeOpenAI, tmp_path: Path) -> None:
    config = gateway_config(fake_upstream.base_url)
    config["general_settings"]["data_dir"] = str(tmp_path / "data")
    env = {"DATABASE_URL": ""}
    pgdata = tmp_path / "data" / "postgres"
    try:
        _run_twice(config, env, pgdata)
    finally:
        if _postmaster_alive(pgdata):  # never leave a server behind, whatever failed above
            subprocess.run(
                [str(_bin_path() / "pg_ctl"), "-D", str(pgdata), "-m", "immediate", "stop"],
                capture_output=True,
                check=False,
                user="embedded_postgres" if os.geteuid() == 0 else None,
            )


def _run_twice(config: dict, env: dict[str, str], pgdata: Path) -> None:
    with gateway_process(config, env=env) as gw:
        created = httpx.post(
            gw.base_url + "/key/generate",
            json={"key_alias": "embedded"},
            headers={"Authorization": f"Bearer {MASTER_KEY}"},
            timeout=30,
        )
        assert created.status_code == 200, created.text + gw.logs()
        key = created.json()["key"]
        assert _postmaster_alive(pgdata)
    # Stopped with the gateway (pg_ctl stop waits for it; allow for a slow, busy machine).
    deadline = time.monotonic() + 30
    while _postmaster_alive(pgdata):
        assert time.monotonic() < deadline, "the embedded postgres outlived the gateway"
        time.sleep(0.1)
    with gateway_process(config, env=env) as gw:
        client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key=key, max_retries=0, timeout=30)
        reply = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.choices[0].message.content
