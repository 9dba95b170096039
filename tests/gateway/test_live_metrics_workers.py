"""Scrape-time metrics under ``serve --workers 2``: whichever worker answers, the page has them once,
merged over both workers (``gateway.live_metrics``), and a dead worker drops out.

Without the merge, multiprocess mode's page holds only what metric objects wrote to files, so the
spend backlog and deployment health (computed when scraped) were missing.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.fake_openai import FakeOpenAI
from tests.support.gateway_app import MASTER_KEY, gateway_config, own_database
from tests.support.gateway_process import GatewayProcess, free_port, gateway_process
from tests.support.redis_server import redis_url

__all__ = ["redis_url"]  # the session fixture, used by `gateway` below


@pytest.fixture(scope="module")
def gateway(redis_url: str) -> Iterator[GatewayProcess]:
    with own_database("switchyard_live_metrics") as database_url, FakeOpenAI() as fake:
        config = gateway_config(fake.base_url, models=["gpt-4o-mini"], redis_url=redis_url)
        dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
        config["model_list"].append(
            {"model_name": "dead", "litellm_params": {"model": "openai/dead", "api_base": dead}}
        )
        # One failure cools a deployment down for a minute, with no retry.
        config["router_settings"] = {"num_retries": 0, "allowed_fails": 0, "cooldown_time": 60}
        with gateway_process(config, env={"DATABASE_URL": database_url}, extra_args=["--workers", "2"]) as gw:
            yield gw


def pages_from_both(gw: GatewayProcess) -> dict[int, str]:
    """The metrics page as each worker answers it (new connections until both have)."""
    pages: dict[int, str] = {}
    deadline = time.monotonic() + 60
    while len(pages) < 2:
        assert time.monotonic() < deadline, f"one worker never answered:\n{gw.logs()}"
        with httpx.Client(timeout=10) as client:
            pid = int(client.get(gw.base_url + "/health/readiness").json()["pid"])
            if pid not in pages:
                pages[pid] = client.get(gw.base_url + "/metrics").text
    return pages


def samples(page: str, name: str) -> list[tuple[dict[str, str], float]]:
    found = []
    for line in page.splitlines():
        match = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
        if match and match.group(1) == name:
            found.append((dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or "")), float(match.group(3))))
    return found


def health(page: str) -> dict[str, float]:
    return {labels["model"]: value for labels, value in samples(page, "switchyard_deployment_healthy")}


def test_scrape_time_metrics_are_on_every_workers_page_once(gateway: GatewayProcess) -> None:
    time.sleep(1.5)  # each worker publishes its reading every second
    for pid, page in pages_from_both(gateway).items():
        assert samples(page, "switchyard_spend_queue_records") == [({}, 0.0)], pid
        assert health(page) == {"gpt-4o-mini": 1.0, "dead": 1.0}, pid


def test_a_deployment_cooling_down_on_one_worker_is_unhealthy_on_the_page(gateway: GatewayProcess) -> None:
    reply = httpx.post(
        gateway.base_url + "/v1/chat/completions",
        json={"model": "dead", "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {MASTER_KEY}"},
        timeout=30,
    )
    assert reply.status_code == 502
    time.sleep(1.5)
    for pid, page in pages_from_both(gateway).items():
        assert health(page) == {"gpt-4o-mini": 1.0, "dead": 0.0}, pid
        # The limiter's Redis round trip, counted in plain Python (a Tally) and merged the same way.
        trips = dict(
            (labels["client"], n) for labels, n in samples(page, "switchyard_redis_roundtrip_seconds_count")
        )
        assert trips["pipelined"] >= 1, pid


def metrics_dir(worker_pid: int) -> Path:
    """The multiprocess directory the supervisor gave its workers (from a worker's environment)."""
    environ = Path(f"/proc/{worker_pid}/environ").read_bytes().decode().split("\0")
    (value,) = [item.split("=", 1)[1] for item in environ if item.startswith("PROMETHEUS_MULTIPROC_DIR=")]
    return Path(value)


def test_a_dead_workers_reading_drops_out(gateway: GatewayProcess) -> None:
    pids = set(pages_from_both(gateway))
    directory = metrics_dir(min(pids))
    assert {p.name for p in directory.glob("live-*.json")} == {f"live-{pid}.json" for pid in pids}
    victim = max(pids)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:  # the supervisor starts a replacement, which publishes its own reading
        pages = pages_from_both(gateway)
        live = {f"live-{pid}.json" for pid in pages}
        if victim not in pages and {p.name for p in directory.glob("live-*.json")} == live:
            break
        assert time.monotonic() < deadline, (pages.keys(), list(directory.glob("live-*")))
        time.sleep(0.5)
    for page in pages.values():
        assert samples(page, "switchyard_spend_queue_records") == [({}, 0.0)]
