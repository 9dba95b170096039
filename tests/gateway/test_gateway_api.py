"""The OpenAI-compatible API of a real `switchyard serve` process, driven by the official SDK."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import openai
import pytest

from tests.gateway.conftest import MASTER_KEY
from tests.support.fake_openai import Behavior, FakeOpenAI
from tests.support.gateway_process import GatewayProcess

MESSAGES = [{"role": "user", "content": "Say hello"}]


def client(gw: GatewayProcess, key: str = MASTER_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url + "/v1", api_key=key, max_retries=0, timeout=20)


def aclient(gw: GatewayProcess, key: str = MASTER_KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key=key, max_retries=0, timeout=20)


# --------------------------------------------------------------------------- success paths


def test_completion_sync(gateway: GatewayProcess, fake: FakeOpenAI) -> None:
    fake.set_behavior(Behavior(content="Hello there, friend", chunks=4))
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="gpt-fake", messages=MESSAGES, extra_headers={"x-request-id": "req-abc-123"}
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello there, friend"
    assert completion.usage is not None and completion.usage.prompt_tokens == 7
    assert raw.headers["x-request-id"] == "req-abc-123"
    assert raw.headers["x-switchyard-deployment"] == "fake-1"
    assert raw.headers["x-switchyard-attempts"] == "1"
    assert float(raw.headers["x-switchyard-overhead-ms"]) >= 0
    assert "server" not in raw.headers
    sent = fake.requests[-1]
    assert sent.body["model"] == "fake-upstream"  # the upstream model, not the public name
    assert sent.headers["authorization"] == "Bearer sk-upstream-secret"


async def test_completion_async_and_litellm_params(gateway: GatewayProcess, fake: FakeOpenAI) -> None:
    async with aclient(gateway) as c:
        completion = await c.chat.completions.create(model="litellm-style", messages=MESSAGES)
    assert completion.choices[0].message.content == Behavior().text()
    assert fake.requests[-1].body["model"] == "vllm-model"


def test_request_id_generated_and_unknown_fields_pass_through(
    gateway: GatewayProcess, fake: FakeOpenAI
) -> None:
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="gpt-fake",
        messages=MESSAGES,
        temperature=0.2,
        extra_body={"vendor_knob": {"depth": 3}, "top_k": 5},
    )
    assert len(raw.headers["x-request-id"]) >= 16
    body = fake.requests[-1].body
    assert body["vendor_knob"] == {"depth": 3}
    assert body["top_k"] == 5
    assert body["temperature"] == 0.2


def test_stream_sync_without_usage(gateway: GatewayProcess, fake: FakeOpenAI) -> None:
    behavior = Behavior(content="The quick brown fox jumps over the lazy dog", chunks=9)
    fake.set_behavior(behavior)
    chunks = list(client(gateway).chat.completions.create(model="gpt-fake", messages=MESSAGES, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == behavior.text()
    assert all(c.usage is None for c in chunks)  # the client did not ask for usage
    assert chunks[-1].choices[0].finish_reason == "stop"
    # ...but the gateway asked the upstream for it, so accounting has the tokens.
    assert fake.requests[-1].body["stream_options"] == {"include_usage": True}


async def test_stream_async_with_usage(gateway: GatewayProcess, fake: FakeOpenAI) -> None:
    fake.set_behavior(Behavior(chunks=20))
    async with aclient(gateway) as c:
        stream = await c.chat.completions.create(
            model="gpt-fake", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == Behavior(chunks=20).text()
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 20
    assert chunks[-1].usage.prompt_tokens == 7


def test_stream_wire_format(gateway: GatewayProcess, fake: FakeOpenAI) -> None:
    fake.set_behavior(Behavior(chunks=2))
    body = {"model": "gpt-fake", "messages": MESSAGES, "stream": True}
    headers = {"authorization": f"Bearer {MASTER_KEY}"}
    with httpx.stream("POST", gateway.base_url + "/chat/completions", json=body, headers=headers) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read()
    events = raw.split(b"\n\n")
    assert events[-1] == b"" and events[-2] == b"data: [DONE]"
    assert all(e.startswith(b"data: {") for e in events[:-2])
    assert len(events[:-2]) == 4  # role chunk, 2 content chunks, finish chunk; no usage chunk


def test_models_lists_names_only(gateway: GatewayProcess) -> None:
    models = client(gateway).models.list()
    assert [m.id for m in models.data] == ["gpt-fake", "litellm-style", "slow", "dead"]
    raw = httpx.get(gateway.base_url + "/models", headers={"authorization": f"Bearer {MASTER_KEY}"})
    assert raw.status_code == 200
    assert b"sk-upstream-secret" not in raw.content
    assert b"127.0.0.1" not in raw.content


def test_health_and_metrics(gateway: GatewayProcess) -> None:
    client(gateway).chat.completions.create(model="gpt-fake", messages=MESSAGES)
    assert httpx.get(gateway.base_url + "/health/liveliness").status_code == 200
    ready = httpx.get(gateway.base_url + "/health/readiness")
    assert ready.status_code == 200 and ready.json()["status"] == "healthy"
    page = httpx.get(gateway.base_url + "/metrics").text
    served = 'error_type="none",model="gpt-fake",operation="chat",status="200"'
    assert f"switchyard_requests_total{{{served}}}" in page
    assert "switchyard_request_duration_seconds_bucket" in page
    assert "switchyard_requests_in_flight" in page


# --------------------------------------------------------------------------- errors


def _assert_openai_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "Traceback" not in response.text
    return error


def test_invalid_json_is_400(gateway: GatewayProcess) -> None:
    r = httpx.post(
        gateway.base_url + "/v1/chat/completions",
        content=b'{"model": "gpt-fake", "messages": [',
        headers={"authorization": f"Bearer {MASTER_KEY}", "content-type": "application/json"},
    )
    assert _assert_openai_error(r, 400)["code"] == "invalid_json"


def test_bad_fields_are_400(gateway: GatewayProcess) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client(gateway).chat.completions.create(model="gpt-fake", messages=[])
    assert exc.value.status_code == 400
    assert exc.value.body["param"] == "messages"
    r = httpx.post(
        gateway.base_url + "/v1/chat/completions",
        json={"model": "gpt-fake", "messages": MESSAGES, "stream": "yes"},
        headers={"authorization": f"Bearer {MASTER_KEY}"},
    )
    assert _assert_openai_error(r, 400)["param"] == "stream"


def test_missing_and_wrong_key_are_401(gateway: GatewayProcess) -> None:
    with pytest.raises(openai.AuthenticationError):
        client(gateway, key="sk-wrong").chat.completions.create(model="gpt-fake", messages=MESSAGES)
    r = httpx.post(
        gateway.base_url + "/v1/chat/completions", json={"model": "gpt-fake", "messages": MESSAGES}
    )
    assert _assert_openai_error(r, 401)["code"] == "missing_api_key"
    r = httpx.get(gateway.base_url + "/v1/models", headers={"authorization": "Bearer nope"})
    _assert_openai_error(r, 401)


def test_unknown_model_is_404_listing_models(gateway: GatewayProcess) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        client(gateway).chat.completions.create(model="gpt-nope", messages=MESSAGES)
    assert "gpt-fake" in exc.value.message and "litellm-style" in exc.value.message


def test_body_too_large_is_413(gateway: GatewayProcess) -> None:
    big = [{"role": "user", "content": "x" * 60_000}]
    with pytest.raises(openai.APIStatusError) as exc:
        client(gateway).chat.completions.create(model="gpt-fake", messages=big)
    assert exc.value.status_code == 413

    def chunked():  # no Content-Length: the limit is enforced while reading
        yield b'{"model": "gpt-fake", "messages": [{"role": "user", "content": "'
        for _ in range(20):
            yield b"y" * 4096
        yield b'"}]}'

    r = httpx.post(
        gateway.base_url + "/v1/chat/completions",
        content=chunked(),
        headers={"authorization": f"Bearer {MASTER_KEY}"},
    )
    _assert_openai_error(r, 413)


@pytest.mark.parametrize(
    ("status", "error_class"),
    [(429, openai.RateLimitError), (500, openai.InternalServerError), (503, openai.InternalServerError)],
)
def test_upstream_errors_keep_status_and_message(
    gateway: GatewayProcess, fake: FakeOpenAI, status: int, error_class: type[openai.APIStatusError]
) -> None:
    fake.set_behavior(Behavior(status=status, error_message=f"upstream says {status}"))
    with pytest.raises(error_class) as exc:
        client(gateway).chat.completions.create(model="gpt-fake", messages=MESSAGES)
    assert exc.value.status_code == status
    assert f"upstream says {status}" in exc.value.message
    # Streams fail the same way when the upstream fails before the first byte.
    with pytest.raises(error_class):
        client(gateway).chat.completions.create(model="gpt-fake", messages=MESSAGES, stream=True)


def test_upstream_timeout_is_408(gateway: GatewayProcess, fake: FakeOpenAI) -> None:
    fake.set_behavior(Behavior(delay_s=3.0), model="slow-upstream")
    with pytest.raises(openai.APIStatusError) as exc:
        client(gateway).chat.completions.create(model="slow", messages=MESSAGES)
    assert exc.value.status_code in (408, 504)


def test_unreachable_upstream_is_502(gateway: GatewayProcess) -> None:
    with pytest.raises(openai.APIStatusError) as exc:
        client(gateway).chat.completions.create(model="dead", messages=MESSAGES)
    assert exc.value.status_code == 502


def test_unknown_route_is_json_404(gateway: GatewayProcess) -> None:
    r = httpx.get(gateway.base_url + "/v1/nothing-here")
    _assert_openai_error(r, 404)
    r = httpx.get(gateway.base_url + "/v1/chat/completions")  # wrong method
    _assert_openai_error(r, 405)


def test_upstream_body_not_json_is_502(gateway: GatewayProcess, fake: FakeOpenAI) -> None:
    fake.set_behavior(Behavior(raw_body=b"<html>oops</html>"))
    with pytest.raises(openai.APIStatusError) as exc:
        client(gateway).chat.completions.create(model="gpt-fake", messages=MESSAGES)
    assert exc.value.status_code == 502


def test_stream_broken_midway_reports_error_event(gateway: GatewayProcess, fake: FakeOpenAI) -> None:
    fake.set_behavior(Behavior(chunks=10, fail_after_chunks=3))
    body = {"model": "gpt-fake", "messages": MESSAGES, "stream": True}
    headers = {"authorization": f"Bearer {MASTER_KEY}"}
    with httpx.stream("POST", gateway.base_url + "/v1/chat/completions", json=body, headers=headers) as r:
        raw = r.read()
    events = [e for e in raw.split(b"\n\n") if e]
    assert events[-1].startswith(b'data: {"error"')
    assert b"[DONE]" not in raw


# --------------------------------------------------------------------------- disconnects


def test_client_disconnect_mid_stream_cancels_upstream(gateway: GatewayProcess, fake: FakeOpenAI) -> None:
    fake.set_behavior(Behavior(chunks=200, chunk_delay_s=0.05))
    stream = client(gateway).chat.completions.create(model="gpt-fake", messages=MESSAGES, stream=True)
    seen = 0
    for _chunk in stream:
        seen += 1
        if seen == 3:
            break
    stream.close()  # drops the connection
    assert fake.wait_for_cancel(10.0), "the upstream request was not cancelled"
    assert fake.completed_streams == 0
    # The gateway is still healthy and serves the next request.
    fake.set_behavior(Behavior())
    assert httpx.get(gateway.base_url + "/health/readiness").status_code == 200
    completion = client(gateway).chat.completions.create(model="gpt-fake", messages=MESSAGES)
    assert completion.choices[0].message.content == Behavior().text()


async def test_client_disconnect_while_waiting_non_stream(gateway: GatewayProcess, fake: FakeOpenAI) -> None:
    fake.set_behavior(Behavior(delay_s=3.0))
    async with httpx.AsyncClient(timeout=0.3) as c:
        with pytest.raises(httpx.ReadTimeout):
            await c.post(
                gateway.base_url + "/v1/chat/completions",
                json={"model": "gpt-fake", "messages": MESSAGES},
                headers={"authorization": f"Bearer {MASTER_KEY}"},
            )
    # The gateway noticed the client leaving and dropped its upstream request too.
    assert await asyncio.to_thread(fake.wait_for_cancel, 5.0), "the upstream request was not cancelled"
    fake.set_behavior(Behavior())
    async with aclient(gateway) as c:
        completion = await c.chat.completions.create(model="gpt-fake", messages=MESSAGES)
    assert completion.choices[0].message.content == Behavior().text()


def test_gateway_process_never_loads_torch(gateway: GatewayProcess) -> None:
    # The gateway-only path must stay light: torch loads only when a `local/` model is configured.
    client(gateway).chat.completions.create(model="gpt-fake", messages=MESSAGES)
    maps = Path(f"/proc/{gateway.process.pid}/maps")
    if not maps.exists():
        pytest.skip("needs /proc")
    assert "libtorch" not in maps.read_text()
