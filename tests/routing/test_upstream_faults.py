"""Upstream faults end in a clear OpenAI-shaped error (or a fallback's answer), never a hang or a 500.

A real ``switchyard serve`` process with a small router timeout (1 s), its own Postgres database
and an in-process limiter holding each model to one request at a time, in front of upstreams that
misbehave on script: they hang, drop the connection, answer malformed JSON, cut a stream short
(with or without closing the connection), stall a stream (silently or with keep-alive comments),
or garble a stream event. Each test checks what the caller got and that the request was
accounted exactly once: one spend row, and the model's parallel-request slot released (the next
request to the same model is admitted, not refused with 429).

"Never a hang" is checked without timing anything: every client here gives up after 20 s, far
past the gateway's 1 s timeout, and a client that gives up fails the test.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import openai
import pytest

from tests.support import misbehaving_upstream as mu
from tests.support.gateway_process import GatewayProcess, gateway_process
from tests.support.misbehaving_upstream import Behaviour, MisbehavingUpstream
from tests.support.postgres import fresh_database, postgres_server

MASTER_KEY = "sk-master-upstream-faults"
MODELS = ("plain", "stream", "primary", "backup")
MSG = [{"role": "user", "content": "hi"}]
CLIENT_TIMEOUT_S = 20.0


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    with postgres_server() as server, fresh_database(server) as url:
        yield url


@pytest.fixture(scope="module")
def ups() -> Iterator[dict[str, MisbehavingUpstream]]:
    started = {name: MisbehavingUpstream(name).start() for name in MODELS}
    yield started
    for up in started.values():
        up.stop()


@pytest.fixture(autouse=True)
def _fresh_scripts(ups: dict[str, MisbehavingUpstream]) -> None:
    for up in ups.values():
        up.reset()
        up.set_default(mu.ok())


@pytest.fixture(scope="module")
def gw(ups: dict[str, MisbehavingUpstream], database_url: str) -> Iterator[GatewayProcess]:
    config = {
        "model_list": [
            {
                "model_name": name,
                "params": {"model": f"openai/{name}", "api_base": up.url, "api_key": "sk-upstream-faults"},
                "model_info": {"id": f"{name}-0"},
            }
            for name, up in ups.items()
        ],
        "general_settings": {"master_key": MASTER_KEY, "spend_flush_interval_s": 0.1},
        "router_settings": {
            "timeout": 1,
            "num_retries": 0,
            "allowed_fails": 1000,
            "cooldown_time": 0,
            "fallbacks": [{"primary": ["backup"]}],
        },
        # One request at a time per model: a failure path that leaks its slot makes the next 429.
        "limit_settings": {"model_limits": {name: {"max_parallel_requests": 1} for name in MODELS}},
    }
    with gateway_process(config, env={"DATABASE_URL": database_url}) as g:
        yield g


def post(gw: GatewayProcess, model: str, *, stream: bool = False) -> tuple[str, httpx.Response]:
    """One chat request, read to its end; returns its request id and the response."""
    request_id = f"fault-{model}-{time.time_ns()}"
    headers = {"authorization": f"Bearer {MASTER_KEY}", "x-request-id": request_id}
    body: dict[str, Any] = {"model": model, "messages": MSG, "stream": stream}
    with httpx.Client(timeout=CLIENT_TIMEOUT_S) as client:
        return request_id, client.post(gw.base_url + "/v1/chat/completions", json=body, headers=headers)


def assert_error_shape(obj: Any) -> dict[str, Any]:
    assert isinstance(obj, dict) and set(obj) == {"error"}, obj
    error = obj["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"], error
    return error


def stream_events(resp: httpx.Response) -> list[str]:
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert resp.text.endswith("\n\n"), resp.text
    return [e.removeprefix("data: ") for e in resp.text.split("\n\n") if e]


async def _spend_rows(database_url: str, request_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    conn = await asyncpg.connect(database_url)
    try:
        deadline = time.monotonic() + 20
        while True:
            rows = await conn.fetch(
                "SELECT request_id, status, error_code FROM spend_logs WHERE request_id = ANY($1)",
                request_ids,
            )
            if len({r["request_id"] for r in rows}) >= len(request_ids) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.3)  # three more flush intervals: a duplicate would have landed by now
        rows = await conn.fetch(
            "SELECT request_id, status, error_code FROM spend_logs WHERE request_id = ANY($1)", request_ids
        )
    finally:
        await conn.close()
    by_id: dict[str, list[dict[str, Any]]] = {rid: [] for rid in request_ids}
    for r in rows:
        by_id[r["request_id"]].append(dict(r))
    return by_id


def assert_accounted_once(
    gw: GatewayProcess, database_url: str, model: str, failed: str, error_code: str
) -> None:
    """``failed`` left one failure row and released its slot: the next request is served."""
    ok_id, ok = post(gw, model)
    assert ok.status_code == 200, ok.text  # a leaked parallel-request slot would answer 429
    rows = asyncio.run(_spend_rows(database_url, [failed, ok_id]))
    assert [(r["status"], r["error_code"]) for r in rows[failed]] == [("failure", error_code)], rows
    assert [r["status"] for r in rows[ok_id]] == ["success"], rows


# ---- plain (non-streaming) requests ----------------------------------------------------------


@pytest.mark.parametrize(
    ("behaviour", "status", "code"),
    [
        pytest.param(mu.hang(), 408, "timeout", id="no-answer"),
        pytest.param(mu.drop(), 502, "upstream_unreachable", id="connection-dropped"),
        pytest.param(
            mu.raw(200, b'{"id": "chatcmpl-1", "choices": ['),
            502,
            "upstream_malformed_response",
            id="cut-json",
        ),
        pytest.param(mu.raw(200, b"[1, 2, 3]"), 502, "upstream_malformed_response", id="json-not-object"),
        pytest.param(
            mu.raw(200, b"not gzip at all", {"content-encoding": "gzip"}),
            502,
            "upstream_malformed_response",
            id="bad-content-encoding",
        ),
        pytest.param(
            mu.raw(302, b"", {"location": "http://elsewhere/"}), 502, "upstream_redirect", id="redirect"
        ),
    ],
)
def test_plain_request_fault_is_a_clear_error(
    gw: GatewayProcess,
    ups: dict[str, MisbehavingUpstream],
    database_url: str,
    behaviour: Behaviour,
    status: int,
    code: str,
) -> None:
    ups["plain"].set_default(behaviour)
    request_id, resp = post(gw, "plain")
    assert resp.status_code == status, resp.text
    error = assert_error_shape(resp.json())
    assert error["code"] == code, error
    ups["plain"].set_default(mu.ok())
    assert_accounted_once(gw, database_url, "plain", request_id, code)


def test_no_first_stream_event_in_time_is_a_plain_timeout(
    gw: GatewayProcess, ups: dict[str, MisbehavingUpstream], database_url: str
) -> None:
    ups["stream"].script(mu.hang())
    request_id, resp = post(gw, "stream", stream=True)
    assert resp.status_code == 408, resp.text  # nothing was sent yet: a plain error, not SSE
    assert assert_error_shape(resp.json())["type"] == "timeout"
    assert_accounted_once(gw, database_url, "stream", request_id, "timeout")


# ---- streams that fail after their first event ------------------------------------------------


@pytest.mark.parametrize(
    ("behaviour", "code", "says"),
    [
        pytest.param(mu.reset_mid_stream(2), "upstream_unreachable", "broke", id="connection-reset"),
        pytest.param(mu.truncated_stream(2), "stream_truncated", "before [DONE]", id="closed-without-done"),
        pytest.param(mu.stalled_stream(2), "timeout", "stalled", id="stalled-silent"),
        pytest.param(
            mu.stalled_stream(2, keepalive=0.2), "timeout", "no stream event", id="stalled-keepalives"
        ),
        pytest.param(mu.garbled_stream(2), "upstream_malformed_response", "malformed", id="garbled-event"),
    ],
)
def test_stream_fault_ends_with_an_error_event(
    gw: GatewayProcess,
    ups: dict[str, MisbehavingUpstream],
    database_url: str,
    behaviour: Behaviour,
    code: str,
    says: str,
) -> None:
    ups["stream"].script(behaviour)
    request_id, resp = post(gw, "stream", stream=True)
    events = stream_events(resp)
    assert "[DONE]" not in events  # a broken stream must not look complete
    chunks, last = events[:-1], json.loads(events[-1])
    assert len(chunks) == 2 and all(json.loads(c)["object"] == "chat.completion.chunk" for c in chunks)
    error = assert_error_shape(last)
    assert error["code"] == code and says in error["message"], error
    assert error["message"].startswith("stream interrupted: ")
    assert ups["stream"].chat_hits == 1  # bytes went out: no retry
    assert_accounted_once(gw, database_url, "stream", request_id, code)


def test_the_openai_sdk_raises_on_a_truncated_stream(
    gw: GatewayProcess, ups: dict[str, MisbehavingUpstream]
) -> None:
    ups["stream"].script(mu.truncated_stream(3))
    client = openai.OpenAI(
        base_url=gw.base_url + "/v1", api_key=MASTER_KEY, max_retries=0, timeout=CLIENT_TIMEOUT_S
    )
    got: list[str] = []
    with pytest.raises(openai.APIError) as info:
        for chunk in client.chat.completions.create(model="stream", messages=MSG, stream=True):  # type: ignore[arg-type]
            got += [c.delta.content or "" for c in chunk.choices]
    assert "before [DONE]" in info.value.message
    assert "".join(got) == "stre"  # what arrived before the cut, and nothing after


# ---- fallbacks ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("behaviour", "stream"),
    [
        pytest.param(mu.hang(), False, id="no-answer"),
        pytest.param(mu.hang(), True, id="no-answer-stream"),
        pytest.param(mu.drop(), False, id="connection-dropped"),
        pytest.param(mu.drop(), True, id="connection-dropped-stream"),
        pytest.param(mu.raw(200, b"<html>bad gateway</html>"), False, id="not-json"),
        pytest.param(mu.truncated_stream(0), True, id="stream-closed-without-any-event"),
    ],
)
def test_a_fallback_answers_when_the_upstream_fails(
    gw: GatewayProcess,
    ups: dict[str, MisbehavingUpstream],
    database_url: str,
    behaviour: Behaviour,
    stream: bool,
) -> None:
    ups["primary"].set_default(behaviour)
    request_id, resp = post(gw, "primary", stream=stream)
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-switchyard-deployment"] == "backup-0"
    if stream:
        events = stream_events(resp)
        assert events[-1] == "[DONE]"
        text = "".join(c["delta"].get("content") or "" for e in events[:-1] for c in json.loads(e)["choices"])
    else:
        text = resp.json()["choices"][0]["message"]["content"]
    assert text == "backup"
    assert ups["primary"].chat_hits >= 1 and ups["backup"].chat_hits == 1
    rows = asyncio.run(_spend_rows(database_url, [request_id]))[request_id]
    assert [r["status"] for r in rows] == ["success"], rows  # the request is accounted once, as served
