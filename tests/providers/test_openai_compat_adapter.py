"""The OpenAI-compatible adapter against a real HTTP fake upstream."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest

from providers.contract import ProviderCall
from providers.errors import (
    ContentPolicyError,
    ContextWindowExceededError,
    ProviderError,
    ProviderTimeoutError,
    ProviderUnreachableError,
)
from providers.http import build_client
from providers.http11_transport import HTTP11Transport
from providers.openai_compat import OpenAICompatProvider
from providers.usage_tap import UsageTap
from tests.support.fake_openai import Behavior, FakeOpenAI
from tests.support.gateway_process import free_port

# The client fixture is built on the session loop, so the tests run on it too.
pytestmark = pytest.mark.asyncio(loop_scope="session")

BODY = {"model": "public-name", "messages": [{"role": "user", "content": "hi"}], "seed": 42}


def call(fake: FakeOpenAI, **kw: object) -> ProviderCall:
    args: dict = {"upstream_model": "up-model", "body": BODY, "api_base": fake.base_url, "api_key": "sk-u"}
    args.update(kw)
    return ProviderCall(**args)


@pytest.fixture(params=["http11", "httpcore"])
async def provider(request: pytest.FixtureRequest) -> OpenAICompatProvider:
    """The adapter over both network layers: the gateway's default and httpx's own."""
    client = build_client(HTTP11Transport() if request.param == "http11" else None)
    yield OpenAICompatProvider(client)
    await client.aclose()


async def test_chat_passes_body_through_and_parses_usage(
    provider: OpenAICompatProvider, fake: FakeOpenAI
) -> None:
    resp = await provider.chat(call(fake))
    assert resp.status == 200
    assert orjson.loads(resp.body)["choices"][0]["message"]["content"] == Behavior().text()
    assert resp.usage is not None and (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (7, 3)
    sent = fake.requests[-1]
    assert sent.body == {**BODY, "model": "up-model"}
    assert sent.headers["authorization"] == "Bearer sk-u"
    assert BODY["model"] == "public-name"  # the caller's body is not mutated


async def test_stream_yields_events_with_usage_and_no_done(
    provider: OpenAICompatProvider, fake: FakeOpenAI
) -> None:
    fake.set_behavior(Behavior(chunks=5))
    events = [e async for e in provider.chat_stream(call(fake))]
    assert all(e.startswith(b"data: {") and e.endswith(b"\n\n") for e in events)
    tap = UsageTap()
    usage_only = [tap.inspect(e) for e in events]
    assert usage_only[-1] is True and not any(usage_only[:-1])
    assert tap.usage is not None and tap.usage.completion_tokens == 5
    assert fake.requests[-1].body["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(
    ("behavior", "klass", "status"),
    [
        (Behavior(status=429, headers={"retry-after": "3"}), ProviderError, 429),
        (Behavior(status=400, error_code="context_length_exceeded"), ContextWindowExceededError, 400),
        (Behavior(status=400, error_code="content_filter", error_message="flagged"), ContentPolicyError, 400),
        (Behavior(status=503), ProviderError, 503),
    ],
)
async def test_errors_are_classified(
    provider: OpenAICompatProvider, fake: FakeOpenAI, behavior: Behavior, klass: type, status: int
) -> None:
    fake.set_behavior(behavior)
    with pytest.raises(klass) as exc:
        await provider.chat(call(fake))
    assert exc.value.status_code == status
    assert exc.value.retryable == (status >= 429)
    if status == 429:
        assert exc.value.retry_after == 3.0
    fake.set_behavior(behavior)
    with pytest.raises(klass):
        await anext(aiter(provider.chat_stream(call(fake))))


async def test_timeout_and_unreachable(provider: OpenAICompatProvider, fake: FakeOpenAI) -> None:
    fake.set_behavior(Behavior(delay_s=2.0))
    with pytest.raises(ProviderTimeoutError) as exc:
        await provider.chat(call(fake, timeout=0.3))
    assert exc.value.status_code in (408, 504) and exc.value.retryable
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(ProviderUnreachableError) as exc2:
        await provider.chat(call(fake, api_base=dead))
    assert exc2.value.status_code == 502


async def test_closing_the_stream_cancels_upstream(provider: OpenAICompatProvider, fake: FakeOpenAI) -> None:
    fake.set_behavior(Behavior(chunks=100, chunk_delay_s=0.05))
    stream = provider.chat_stream(call(fake))
    await anext(stream)
    await anext(stream)
    await stream.aclose()
    assert await asyncio.to_thread(fake.wait_for_cancel, 10.0)


async def test_upstream_cookies_are_not_kept(provider: OpenAICompatProvider, fake: FakeOpenAI) -> None:
    # One client serves every tenant: a cookie set by an upstream must never be sent back.
    fake.set_behavior(Behavior(headers={"set-cookie": "session=tenant-a; Path=/"}))
    await provider.chat(call(fake))
    await provider.chat(call(fake))
    assert "cookie" not in fake.requests[-1].headers


async def test_transport_caps_connections_in_use(fake: FakeOpenAI) -> None:
    # With one slot, a second request waits for the first response to be closed (pool timeout).
    client = build_client(HTTP11Transport(max_connections=1))
    provider = OpenAICompatProvider(client)
    try:
        fake.set_behavior(Behavior(chunks=50, chunk_delay_s=0.05))
        stream = provider.chat_stream(call(fake))
        await anext(stream)
        with pytest.raises(httpx.PoolTimeout):
            await client.post(
                fake.base_url + "/chat/completions", content=b"{}", timeout=httpx.Timeout(5, pool=0.2)
            )
        await stream.aclose()
        fake.set_behavior(Behavior())
        assert (await provider.chat(call(fake))).status == 200  # the slot came back
    finally:
        await client.aclose()
