"""``switchyard serve --workers 2``: two processes on one port sharing Postgres and Redis.

Which worker answers is the kernel's choice; a test tells them apart by the ``pid`` readiness
reports on the same keep-alive connection, and opens new connections until it reaches the other.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator

import httpx
import orjson
import pytest

from tests.support.fake_openai import FakeOpenAI
from tests.support.gateway_app import MASTER_KEY, gateway_config, own_database
from tests.support.gateway_process import GatewayProcess, gateway_process, run_switchyard
from tests.support.redis_server import redis_url

__all__ = ["redis_url"]  # the session fixture, used by `gateway` below

MODEL = "gpt-4o-mini"


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    with own_database("switchyard_workers") as url:
        yield url


@pytest.fixture(scope="module")
def gateway(database_url: str, redis_url: str) -> Iterator[GatewayProcess]:
    with (
        FakeOpenAI() as fake,
        gateway_process(
            gateway_config(fake.base_url, models=[MODEL], redis_url=redis_url),
            env={"DATABASE_URL": database_url},
            extra_args=["--workers", "2"],
        ) as gw,
    ):
        yield gw


def worker_pid(client: httpx.Client, gw: GatewayProcess) -> int:
    return int(client.get(gw.base_url + "/health/readiness").json()["pid"])


def client_on_worker(gw: GatewayProcess, *, avoid: set[int] = frozenset()) -> tuple[httpx.Client, int]:
    """A keep-alive client whose connection is served by a worker not in ``avoid``."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        client = httpx.Client(timeout=30, headers={"Authorization": f"Bearer {MASTER_KEY}"})
        pid = worker_pid(client, gw)
        if pid not in avoid:
            return client, pid
        client.close()
    raise AssertionError(f"no worker other than {avoid} answered:\n{gw.logs()}")


def chat(client: httpx.Client, gw: GatewayProcess, key: str) -> int:
    reply = client.post(
        gw.base_url + "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {key}"},
    )
    return reply.status_code


def requests_counted(page: str) -> float:
    pattern = rf'switchyard_requests_total\{{[^}}]*model="{MODEL}"[^}}]*status="200"[^}}]*\}} (\S+)'
    return sum(float(value) for value in re.findall(pattern, page))


def test_two_workers_share_keys_and_metrics(gateway: GatewayProcess) -> None:
    first, first_pid = client_on_worker(gateway)
    second, second_pid = client_on_worker(gateway, avoid={first_pid})
    try:
        assert gateway.process.pid not in (first_pid, second_pid)
        before = requests_counted(first.get(gateway.base_url + "/metrics").text)
        key = first.post(gateway.base_url + "/key/generate", json={}).json()["key"]
        # Created through one worker, used through the other (the key lives in Postgres).
        assert chat(second, gateway, key) == 200
        assert chat(first, gateway, key) == 200
        assert worker_pid(first, gateway) == first_pid and worker_pid(second, gateway) == second_pid
        # Either worker's page counts both requests.
        assert requests_counted(first.get(gateway.base_url + "/metrics").text) == before + 2
        assert requests_counted(second.get(gateway.base_url + "/metrics").text) == before + 2
    finally:
        first.close()
        second.close()


def test_a_killed_worker_is_replaced(gateway: GatewayProcess) -> None:
    client, pid = client_on_worker(gateway)
    client.close()
    os.kill(pid, signal.SIGKILL)
    # The survivor answers at once; keep opening connections until a third pid (the replacement) does.
    seen: set[int] = set()
    deadline = time.monotonic() + 60
    while len(seen) < 2 and time.monotonic() < deadline:
        try:
            with httpx.Client(timeout=5) as fresh:
                seen.add(worker_pid(fresh, gateway))
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    assert len(seen) == 2 and pid not in seen, (seen, gateway.logs())
    assert gateway.alive()
    assert "starting another" in gateway.logs()


def test_keys_create_makes_a_key_every_worker_serves(gateway: GatewayProcess) -> None:
    env = {"SWITCHYARD_MASTER_KEY": MASTER_KEY}
    made = run_switchyard(
        ["keys", "create", "--url", gateway.base_url, "--alias", "cli-key", "--rpm", "50"], env=env
    )
    assert made.returncode == 0, made.stderr
    created = orjson.loads(made.stdout)
    assert created["key_alias"] == "cli-key" and created["rpm_limit"] == 50
    assert MASTER_KEY not in made.stdout + made.stderr
    first, first_pid = client_on_worker(gateway)
    second, _ = client_on_worker(gateway, avoid={first_pid})
    try:
        assert chat(first, gateway, created["key"]) == 200
        assert chat(second, gateway, created["key"]) == 200
    finally:
        first.close()
        second.close()


def test_keys_create_refusals_are_clear(gateway: GatewayProcess) -> None:
    no_key = run_switchyard(["keys", "create", "--url", gateway.base_url], env={"SWITCHYARD_MASTER_KEY": ""})
    assert no_key.returncode == 2 and "SWITCHYARD_MASTER_KEY" in no_key.stderr
    wrong = run_switchyard(
        ["keys", "create", "--url", gateway.base_url], env={"SWITCHYARD_MASTER_KEY": "sk-wrong-master-key"}
    )
    assert wrong.returncode == 1 and "refused (401)" in wrong.stderr and "Traceback" not in wrong.stderr
