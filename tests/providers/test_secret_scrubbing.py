"""Provider secrets never leave the gateway, even when an upstream echoes them back.

A real ``switchyard serve`` process (its own Postgres database, so spend rows are real) in front
of a fake upstream that repeats the credentials each request carried: in 4xx/5xx error bodies
(JSON fields, plain text), in an error event in the middle of a stream, and in the answer to
``/health``'s probe. The provider key, an extra credential header, an ``api_base`` password (sent
as HTTP Basic) and the master key must then appear nowhere the gateway writes: responses, SSE
events, ``/health``, ``/metrics``, spend rows, its own stdout/stderr.
"""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import pytest

from providers.errors import ProviderError
from providers.redaction import call_scrubber
from tests.support import misbehaving_upstream as mu
from tests.support.gateway_process import REPO, GatewayProcess, gateway_process
from tests.support.misbehaving_upstream import MisbehavingUpstream
from tests.support.postgres import fresh_database, postgres_server

MASTER_KEY = "sk-master-scrub-4e5r6t7y8u"
PROVIDER_KEY = "sk-provider-scrub-7f3a9c2e1d"
EXTRA_KEY = "xk-extra-header-5b8e2a0c"
BASIC_USER, BASIC_PASS = "svc", "basic-pass-9q8w7e6r"
BASIC_B64 = base64.b64encode(f"{BASIC_USER}:{BASIC_PASS}".encode()).decode()
SECRETS = (MASTER_KEY, PROVIDER_KEY, EXTRA_KEY, BASIC_PASS, BASIC_B64)
MSG = [{"role": "user", "content": "hi"}]


def assert_clean(text: str, where: str) -> None:
    leaked = [s for s in SECRETS if s in text]
    assert not leaked, f"{where} leaks {leaked}:\n{text[:3000]}"


@dataclass
class Seen:
    """Everything the gateway said while the upstream echoed credentials."""

    responses: dict[str, httpx.Response] = field(default_factory=dict)
    request_ids: list[str] = field(default_factory=list)
    health: str = ""
    metrics: str = ""
    spend_rows: list[str] = field(default_factory=list)
    logs: str = ""


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    with postgres_server() as server, fresh_database(server) as url:
        yield url


@pytest.fixture(scope="module")
def upstream() -> Iterator[MisbehavingUpstream]:
    with MisbehavingUpstream("echo") as up:
        yield up


@pytest.fixture(scope="module")
def gateway(upstream: MisbehavingUpstream, database_url: str) -> Iterator[GatewayProcess]:
    basic_base = upstream.url.replace("http://", f"http://{BASIC_USER}:{BASIC_PASS}@")
    config = {
        "model_list": [
            {
                "model_name": "echo",
                "params": {
                    "model": "openai/echo-model",
                    "api_base": upstream.url,
                    "api_key": PROVIDER_KEY,
                    "extra_headers": {"x-api-key": EXTRA_KEY},
                },
                "model_info": {"id": "echo-0"},
            },
            {
                "model_name": "basic",
                "params": {"model": "hosted_vllm/basic-model", "api_base": basic_base},
                "model_info": {"id": "basic-0"},
            },
        ],
        "general_settings": {"master_key": MASTER_KEY, "spend_flush_interval_s": 0.1},
        "router_settings": {"num_retries": 0, "allowed_fails": 1000, "cooldown_time": 0},
    }
    with gateway_process(config, env={"DATABASE_URL": database_url}) as gw:
        yield gw


def _post(gw: GatewayProcess, seen: Seen, name: str, model: str, stream: bool = False) -> httpx.Response:
    request_id = f"scrub-{name}-{time.time_ns()}"
    seen.request_ids.append(request_id)
    headers = {"authorization": f"Bearer {MASTER_KEY}", "x-request-id": request_id}
    body: dict[str, Any] = {"model": model, "messages": MSG, "stream": stream}
    with httpx.Client(timeout=30) as client:
        resp = client.post(gw.base_url + "/v1/chat/completions", json=body, headers=headers)
    seen.responses[name] = resp
    return resp


async def _spend_rows(database_url: str, request_ids: list[str]) -> list[str]:
    conn = await asyncpg.connect(database_url)
    try:
        deadline = time.monotonic() + 20
        while True:
            rows = await conn.fetch(
                "SELECT request_id, row_to_json(s)::text AS row FROM spend_logs s WHERE request_id = ANY($1)",
                request_ids,
            )
            if len(rows) >= len(request_ids) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        return [r["row"] for r in rows]
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def seen(gateway: GatewayProcess, upstream: MisbehavingUpstream, database_url: str) -> Seen:
    seen = Seen()
    upstream.script(
        mu.echo_credentials(401),
        mu.echo_credentials(500, text_body=True),
        mu.echo_credentials(401),  # a stream refused before its first byte
        mu.echo_credentials(500, mid_stream=2),  # an error event in the middle of a stream
        mu.echo_credentials(403),  # "basic": the api_base password, sent as HTTP Basic
    )
    _post(gateway, seen, "json-401", "echo")
    _post(gateway, seen, "text-500", "echo")
    _post(gateway, seen, "stream-401", "echo", stream=True)
    _post(gateway, seen, "stream-mid", "echo", stream=True)
    _post(gateway, seen, "basic-403", "basic")
    # The premise: the upstream really was sent every secret it echoed.
    sent = [r.headers for r in upstream.requests if r.path.endswith("/chat/completions")]
    assert sent[0]["authorization"] == f"Bearer {PROVIDER_KEY}" and sent[0]["x-api-key"] == EXTRA_KEY
    assert sent[-1]["authorization"] == f"Basic {BASIC_B64}"

    upstream.models_behaviour = mu.echo_credentials(401)
    admin = {"authorization": f"Bearer {MASTER_KEY}"}
    seen.health = httpx.get(gateway.base_url + "/health", headers=admin, timeout=30).text
    upstream.models_behaviour = None
    seen.metrics = httpx.get(gateway.base_url + "/metrics", timeout=30).text
    seen.spend_rows = asyncio.run(_spend_rows(database_url, seen.request_ids))
    seen.logs = gateway.logs()
    return seen


def test_plain_errors_keep_status_and_shape_without_secrets(seen: Seen) -> None:
    for name, status in (("json-401", 401), ("text-500", 500), ("stream-401", 401), ("basic-403", 403)):
        resp = seen.responses[name]
        assert resp.status_code == status, resp.text
        error = resp.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert "[redacted]" in error["message"], error  # the echo arrived, scrubbed
        assert_clean(resp.text, f"the {name} response")
    # Every field an upstream fills is scrubbed, not only the message.
    error = seen.responses["json-401"].json()["error"]
    assert error["code"] == "sk-...[redacted]" and "[redacted]" in error["param"]


def test_a_stream_error_event_mid_stream_carries_no_secret(seen: Seen) -> None:
    resp = seen.responses["stream-mid"]
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
    events = [e for e in resp.text.split("\n\n") if e]
    assert len(events) >= 2 and "data: [DONE]" not in events  # chunks, then the error, then the end
    last = httpx.Response(200, content=events[-1].removeprefix("data: ")).json()
    assert set(last["error"]) == {"message", "type", "param", "code"}
    assert "[redacted]" in last["error"]["message"]
    assert_clean(resp.text, "the stream")


def test_health_reports_the_failure_without_secrets(seen: Seen) -> None:
    report = httpx.Response(200, content=seen.health).json()
    unhealthy = {e["id"]: e for e in report["unhealthy_endpoints"]}
    assert set(unhealthy) == {"echo-0", "basic-0"}
    assert "[redacted]" in unhealthy["basic-0"]["error"] and "[redacted]" in unhealthy["echo-0"]["error"]
    assert unhealthy["basic-0"]["api_base"].startswith("http://[redacted]@127.0.0.1:")
    assert_clean(seen.health, "/health")


def test_metrics_carry_no_secret(seen: Seen) -> None:
    assert "switchyard_requests_total" in seen.metrics
    assert_clean(seen.metrics, "/metrics")


def test_spend_rows_account_each_failure_once_without_secrets(seen: Seen) -> None:
    assert len(seen.spend_rows) == len(seen.request_ids)
    for row in seen.spend_rows:
        assert '"status":"failure"' in row, row
        assert_clean(row, "a spend_logs row")


def test_gateway_logs_carry_no_secret(seen: Seen) -> None:
    assert_clean(seen.logs, "the gateway's stdout/stderr")


def test_a_cut_error_text_keeps_no_part_of_a_secret() -> None:
    clean = call_scrubber(PROVIDER_KEY, {})
    # A text body is cut to 500 characters: here right in the middle of the echoed key.
    body = b"x" * 490 + PROVIDER_KEY.encode() + b" and more"
    err = ProviderError.from_upstream(502, body, None, clean)
    assert PROVIDER_KEY[:10] not in err.message
    assert err.message == "x" * 490 + "sk-...[red"


def test_log_records_are_redacted_in_every_handler() -> None:
    """Whatever handler prints a record, added before or after redaction was installed."""
    script = textwrap.dedent(
        f"""
        import logging, sys
        from providers import redaction
        redaction.protect([{PROVIDER_KEY!r}, "postgresql://app:{BASIC_PASS}@db/x"])
        redaction.install_log_redaction()
        logging.basicConfig(stream=sys.stderr, format="%(levelname)s %(message)s")  # a handler added later
        log = logging.getLogger("switchyard.test")
        log.warning("upstream said: Bearer %s", {PROVIDER_KEY!r})
        log.warning({BASIC_PASS!r} + " in the message itself")
        try:
            raise RuntimeError("the key " + {PROVIDER_KEY!r})
        except RuntimeError:
            log.exception("failed")
        access = logging.getLogger("uvicorn.access")
        access.warning('%s - "%s %s" %d', "1.2.3.4", "GET", "/x?k={PROVIDER_KEY}", 200)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("[redacted]") == 4, proc.stderr
    assert "RuntimeError: the key sk-...[redacted]" in proc.stderr
    assert_clean(proc.stderr, "log output")
