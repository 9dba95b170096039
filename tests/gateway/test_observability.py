"""Operator metrics on ``/metrics`` of a real gateway in front of the fake OpenAI upstream.

Tokens and spend are counted when the spend sink writes its batch, so the test waits for the spend
rows and then for the page to show them; a rate-limited key's refusals are counted by scope kind.
Labels take configured model names only: a name a caller made up, and the caller's key, never
appear on the page.
"""

from __future__ import annotations

import http.server
import json
import re
import threading
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
import yaml

from gateway.config import parse_config
from tests.support.fake_openai import Behavior, FakeOpenAI
from tests.support.gateway_app import MASTER_KEY, gateway_config, keyed_gateway, new_key, own_database
from tests.support.gateway_process import GatewayProcess, gateway_process
from tests.support.spend_rows import spend_rows

MODEL = "gpt-4o-mini"


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    with own_database("switchyard_observability") as url:
        yield url


@pytest.fixture(scope="module")
def gateway(database_url: str) -> Iterator[GatewayProcess]:
    with FakeOpenAI() as fake, keyed_gateway(gateway_config(fake.base_url), database_url) as gw:
        yield gw


def sample(page: str, name: str, **labels: str) -> float | None:
    """The value of the sample ``name`` with exactly ``labels`` (any order), or None."""
    for line in page.splitlines():
        match = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
        if match is None or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if found == labels:
            return float(match.group(3))
    return None


def page_once(gw: GatewayProcess, ready: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> str:
    """The metrics page once every sample in ``ready`` has reached its value (or after 30 s)."""
    deadline = time.monotonic() + 30
    while True:
        page = httpx.get(gw.base_url + "/metrics", timeout=10).text
        if all((sample(page, n, **dict(lb)) or 0) >= v for (n, lb), v in ready.items()):
            return page
        if time.monotonic() > deadline:
            return page
        time.sleep(0.1)


def test_tokens_spend_refusals_and_backlog_on_the_page(gateway: GatewayProcess, database_url: str) -> None:
    created = new_key(gateway, rpm_limit=2)
    client = openai.OpenAI(base_url=gateway.base_url + "/v1", api_key=created["key"], max_retries=0)
    for _ in range(2):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.APIStatusError):
        client.chat.completions.create(model="made-up-model-x", messages=[{"role": "user", "content": "hi"}])

    rows = [r for r in spend_rows(database_url, created["token"], 2) if r["status"] == "success"]
    assert len(rows) == 2
    prompt = sum(r["prompt_tokens"] for r in rows)
    completion = sum(r["completion_tokens"] for r in rows)
    spend = float(sum(r["spend"] for r in rows))
    assert prompt > 0 and completion > 0 and spend > 0
    page = page_once(
        gateway,
        {
            ("switchyard_tokens_total", (("model", MODEL), ("type", "input"))): prompt,
            ("switchyard_tokens_total", (("model", MODEL), ("type", "output"))): completion,
        },
    )
    assert sample(page, "switchyard_tokens_total", model=MODEL, type="input") == prompt
    assert sample(page, "switchyard_tokens_total", model=MODEL, type="output") == completion
    assert sample(page, "switchyard_tokens_total", model=MODEL, type="cached") == 0
    assert sample(page, "switchyard_spend_usd_total", model=MODEL) == pytest.approx(spend)
    assert sample(page, "switchyard_rate_limit_refusals_total", scope="key", limit="requests") == 1
    assert (sample(page, "switchyard_spend_batch_write_seconds_count") or 0) >= 1
    assert sample(page, "switchyard_spend_batch_failures_total") == 0
    backlog = sample(page, "switchyard_spend_queue_records")
    assert backlog is not None and backlog >= 0
    assert "# TYPE switchyard_spend_usd_total counter" in page
    assert (
        sample(
            page,
            "switchyard_requests_total",
            model=MODEL,
            operation="chat",
            status="429",
            error_type="rate_limit_exceeded",
        )
        == 1
    )
    # Labels: configured names only, never the caller's name or key.
    assert "made-up-model-x" not in page
    assert created["key"] not in page and created["token"] not in page


def deployment(name: str, upstream_model: str, dep_id: str, fake: FakeOpenAI) -> dict[str, object]:
    params = {"model": f"openai/{upstream_model}", "api_base": fake.base_url, "api_key": "sk-upstream-fake"}
    return {"model_name": name, "litellm_params": params, "model_info": {"id": dep_id}}


def test_retries_fallbacks_failures_cooldowns_and_health_by_deployment() -> None:
    """Both deployments of "flaky" answer 500: one retry moves to the other, both cool down, the
    request falls back to "backup"; each step is counted under its configured name."""
    with FakeOpenAI() as fake:
        fake.set_behavior(Behavior(status=500), model="flaky-up")
        config = {
            "model_list": [
                deployment("flaky", "flaky-up", "flaky-1", fake),
                deployment("flaky", "flaky-up", "flaky-2", fake),
                deployment("backup", "backup-up", "backup-1", fake),
            ],
            "general_settings": {"master_key": MASTER_KEY},
            "router_settings": {
                "num_retries": 1,
                "allowed_fails": 1,
                "cooldown_time": 600,
                "fallbacks": [{"flaky": ["backup"]}],
            },
        }
        with gateway_process(config) as gw:
            client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key=MASTER_KEY, max_retries=0)
            answer = client.chat.completions.create(
                model="flaky", messages=[{"role": "user", "content": "hi"}]
            )
            assert answer.choices[0].message.content
            page = httpx.get(gw.base_url + "/metrics", timeout=10).text
    assert sample(page, "switchyard_retries_total", model="flaky") == 1
    assert sample(page, "switchyard_fallbacks_total", model="flaky", fallback="backup") == 1
    for dep_id in ("flaky-1", "flaky-2"):
        assert sample(page, "switchyard_upstream_failures_total", deployment=dep_id, failure="retryable") == 1
        assert sample(page, "switchyard_deployment_cooldowns_total", deployment=dep_id) == 1
        assert sample(page, "switchyard_deployment_healthy", deployment=dep_id, model="flaky") == 0
    assert sample(page, "switchyard_deployment_healthy", deployment="backup-1", model="backup") == 1
    assert (
        sample(page, "switchyard_upstream_failures_total", deployment="backup-1", failure="retryable") is None
    )


def test_time_to_first_token_and_overhead(gateway: GatewayProcess) -> None:
    """One TTFT observation per streamed answer (none for a whole one); overhead for both."""
    before = httpx.get(gateway.base_url + "/metrics", timeout=10).text
    client = openai.OpenAI(base_url=gateway.base_url + "/v1", api_key=new_key(gateway)["key"], max_retries=0)
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    after = httpx.get(gateway.base_url + "/metrics", timeout=10).text

    def grew(name: str, **labels: str) -> float:
        return (sample(after, name, **labels) or 0) - (sample(before, name, **labels) or 0)

    assert grew("switchyard_time_to_first_token_seconds_count", model=MODEL) == 1
    assert grew("switchyard_gateway_overhead_seconds_count") == 2


def request_lines(gw: GatewayProcess) -> list[dict[str, object]]:
    """The JSON request lines in the gateway's log (each line's JSON part)."""
    found = []
    for line in gw.logs().splitlines():
        start = line.find('{"event":"request"')
        if start >= 0:
            found.append(json.loads(line[start:]))
    return found


def test_json_request_log_lines_only_when_enabled(gateway: GatewayProcess, database_url: str) -> None:
    secret_prompt = "tell nobody: violet-octopus-42"
    with FakeOpenAI() as fake:
        config = gateway_config(fake.base_url, json_logs=True)
        with keyed_gateway(config, database_url) as gw:
            created = new_key(gw, key_alias="observed-alias")
            client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key=created["key"], max_retries=0)
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": secret_prompt}])
            spend_rows(database_url, created["token"], 1)
            deadline = time.monotonic() + 30
            while not request_lines(gw) and time.monotonic() < deadline:
                time.sleep(0.1)
            lines, logs = request_lines(gw), gw.logs()
    assert len(lines) == 1, logs
    line = lines[0]
    assert line["key_alias"] == "observed-alias" and line["model"] == MODEL and line["status"] == "success"
    assert isinstance(line["request_id"], str) and line["request_id"]
    assert isinstance(line["deployment_id"], str) and line["deployment_id"]
    assert line["prompt_tokens"] and line["completion_tokens"] and line["cost_usd"]
    assert isinstance(line["latency_ms"], float)
    assert secret_prompt not in logs and created["key"] not in logs and "sk-upstream-fake" not in logs
    # The module's gateway runs without json_logs: no such lines.
    assert request_lines(gateway) == []


def test_litellm_json_logs_maps_to_ours_without_a_warning() -> None:
    for value in (True, False):
        text = yaml.safe_dump({"model_list": [], "litellm_settings": {"json_logs": value}})
        config = parse_config(text, strict=True)  # strict: any warning would be an error
        assert config.general_settings.json_logs is value
    ours_wins = {"litellm_settings": {"json_logs": False}, "general_settings": {"json_logs": True}}
    assert parse_config(yaml.safe_dump(ours_wins)).general_settings.json_logs is True


class WebhookReceiver:
    """A loopback HTTP receiver: answers 500 to the first ``fail_first`` POSTs, then 200; keeps
    every body it was sent."""

    def __init__(self, fail_first: int) -> None:
        self.bodies: list[list[dict[str, object]]] = []
        self.statuses: list[int] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                status = 500 if len(receiver.statuses) < fail_first else 200
                receiver.statuses.append(status)
                receiver.bodies.append(json.loads(body))
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def delivered(self) -> list[dict[str, object]]:
        return [r for body, s in zip(self.bodies, self.statuses, strict=True) if s == 200 for r in body]


def test_webhook_gets_batched_records_and_retries_after_a_500(database_url: str) -> None:
    receiver = WebhookReceiver(fail_first=1)
    try:
        with FakeOpenAI() as fake:
            config = gateway_config(fake.base_url, webhook_url=receiver.url)
            with keyed_gateway(config, database_url) as gw:
                created = new_key(gw, key_alias="hooked")
                client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key=created["key"], max_retries=0)
                for _ in range(3):
                    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
                spend_rows(database_url, created["token"], 3)
                deadline = time.monotonic() + 30
                while len(receiver.delivered()) < 3 and time.monotonic() < deadline:
                    time.sleep(0.1)
    finally:
        receiver.server.shutdown()
    assert receiver.statuses[0] == 500 and 200 in receiver.statuses
    records = receiver.delivered()
    assert len(records) == 3 and len({r["request_id"] for r in records}) == 3
    assert all(r["key_alias"] == "hooked" and r["model"] == MODEL and r["prompt_tokens"] for r in records)
    # The batch that got a 500 is sent again, as it was.
    assert receiver.bodies[0] == receiver.bodies[1] and receiver.statuses[1] == 200
