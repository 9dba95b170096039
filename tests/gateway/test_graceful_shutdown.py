"""SIGTERM under load: every request that got a 200 has its spend row, and readiness never says
healthy once the signal is sent (gateway.server.drain).

A real gateway process against the fake upstream answering after a delay; concurrent requests
through the official SDK; SIGTERM once the upstream holds every one of them.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.support.fake_openai import Behavior, FakeOpenAI
from tests.support.gateway_app import gateway_config, keyed_gateway, new_key, own_database
from tests.support.spend_rows import spend_rows

MODEL = "gpt-4o-mini"
CONCURRENT = 8


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    with own_database("switchyard_drain") as url:
        yield url


def test_sigterm_mid_flight_loses_no_spend(database_url: str) -> None:
    with FakeOpenAI(Behavior(delay_s=1.5)) as fake:
        config = gateway_config(fake.base_url, models=[MODEL], graceful_shutdown_s=20)
        with keyed_gateway(config, database_url) as gw:
            key = new_key(gw)
            client = openai.OpenAI(
                base_url=gw.base_url + "/v1", api_key=key["key"], max_retries=0, timeout=30
            )

            def ask(_: int) -> str:
                reply = client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "hi"}]
                )
                return reply.choices[0].message.content or ""

            probes: list[int] = []
            stop_probing = threading.Event()

            def probe() -> None:
                # Readiness after SIGTERM: 503 draining, or no answer once the listener closed.
                with httpx.Client(timeout=2) as http:
                    while not stop_probing.is_set():
                        try:
                            probes.append(http.get(gw.base_url + "/health/readiness").status_code)
                        except httpx.TransportError:
                            return
                        time.sleep(0.01)

            with ThreadPoolExecutor(CONCURRENT) as pool:
                futures = [pool.submit(ask, i) for i in range(CONCURRENT)]
                while len(fake.requests) < CONCURRENT:  # every request is in flight upstream
                    assert all(not f.done() for f in futures), "a request ended before SIGTERM"
                    time.sleep(0.02)
                gw.process.send_signal(signal.SIGTERM)
                prober = threading.Thread(target=probe)
                prober.start()
                answers = [f.result() for f in futures]
                stop_probing.set()
                prober.join()
            # uvicorn re-raises the signal after a clean shutdown, so the status is -SIGTERM.
            assert gw.process.wait(timeout=60) == -signal.SIGTERM, gw.logs()
            assert "Application shutdown complete" in gw.logs()

    assert all(answers), answers
    assert all(status == 503 for status in probes), probes
    rows = spend_rows(database_url, key["token"], CONCURRENT)
    assert len(rows) == CONCURRENT, gw.logs()
    assert all(row["status"] == "success" for row in rows)
