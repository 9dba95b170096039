"""The native Cohere adapter: golden translations of its codec, and the adapter against a fake
Cohere v2 API on loopback (``tests.support.fake_cohere``)."""

from __future__ import annotations

import asyncio
import base64
import struct
from collections.abc import AsyncIterator, Iterator

import httpx
import orjson
import pytest

from providers.cohere import CohereProvider
from providers.contract import ProviderCall
from providers.errors import (
    ContextWindowExceededError,
    ProviderError,
    ProviderTimeoutError,
    ProviderUnreachableError,
)
from providers.formats import openai_chat
from providers.http import build_client
from providers.http11_transport import HTTP11Transport
from providers.schema import (
    Finish,
    GenerationRequest,
    Message,
    StreamStart,
    TextDelta,
    TextPart,
    ToolCallDelta,
    UsageReport,
)
from providers.usage import Usage
from tests.support.fake_cohere import Behavior, FakeCohere, embed_tokens, vector_for
from tests.support.gateway_process import free_port

# The client fixture is built on the session loop, so the tests run on it too.
pytestmark = pytest.mark.asyncio(loop_scope="session")

KEY = "co-adapter-test-key-123"
HELLO = {"model": "public", "messages": [{"role": "user", "content": "hi"}]}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture(scope="module")
def server() -> Iterator[FakeCohere]:
    with FakeCohere(api_key=KEY) as fake:
        yield fake


@pytest.fixture
def fake(server: FakeCohere) -> FakeCohere:
    server.reset()
    return server


@pytest.fixture
async def provider() -> AsyncIterator[CohereProvider]:
    client = build_client(HTTP11Transport())
    yield CohereProvider(client)
    await client.aclose()


def call(fake: FakeCohere, body: dict | None = None, **kw: object) -> ProviderCall:
    args: dict = {
        "upstream_model": "command-r-plus",
        "body": HELLO if body is None else body,
        "api_base": fake.base_url,
        "api_key": KEY,
    }
    args.update(kw)
    return ProviderCall(**args)


def openai_request(body: dict) -> GenerationRequest:
    return openai_chat.parse_request(body)


# ---- against the fake ------------------------------------------------------------------------


async def test_chat_text_with_bearer_and_billed_usage(provider: CohereProvider, fake: FakeCohere) -> None:
    resp = await provider.chat(call(fake, {**HELLO, "temperature": 0.3}))
    body = orjson.loads(resp.body)
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == Behavior().text
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 37, "completion_tokens": 12, "total_tokens": 49}
    assert resp.usage == Usage(37, 12)
    sent = fake.last()
    assert sent.path == "/v2/chat"
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.body == {
        "model": "command-r-plus",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0.3,
    }


async def test_deployment_defaults_fill_unset_fields(provider: CohereProvider, fake: FakeCohere) -> None:
    params = {
        "temperature": 0.1,
        "max_tokens": 9,
        "top_p": 0.4,
        "stop": "X",
        "seed": 3,
        "extra_headers": {"X-Team": "a"},
    }
    await provider.chat(call(fake, {**HELLO, "temperature": 0.6}, params=params))
    sent = fake.last()
    assert {k: sent.body[k] for k in ("temperature", "max_tokens", "p", "stop_sequences", "seed")} == {
        "temperature": 0.6,
        "max_tokens": 9,
        "p": 0.4,
        "stop_sequences": ["X"],
        "seed": 3,
    }
    assert sent.headers["x-team"] == "a"


async def test_tool_round_trip(provider: CohereProvider, fake: FakeCohere) -> None:
    fake.set_behavior(Behavior(tool_calls=[("call_1", "get_weather", '{"city": "Oslo"}')]))
    first = orjson.loads((await provider.chat(call(fake, {**HELLO, "tools": [WEATHER_TOOL]}))).body)
    message = first["choices"][0]["message"]
    assert first["choices"][0]["finish_reason"] == "tool_calls"
    assert message["tool_calls"] == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
        }
    ]
    fake.set_behavior(Behavior(text="It is sunny in Oslo."))
    follow = {
        **HELLO,
        "tools": [WEATHER_TOOL],
        "messages": [
            *HELLO["messages"],
            message,
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ],
    }
    second = orjson.loads((await provider.chat(call(fake, follow))).body)
    assert second["choices"][0]["message"]["content"] == "It is sunny in Oslo."
    sent = fake.last().body["messages"]
    assert sent[1]["tool_calls"][0]["id"] == "call_1" and sent[2] == {
        "role": "tool",
        "tool_call_id": "call_1",
        "content": "sunny",
    }


async def test_stream_text_and_usage(provider: CohereProvider, fake: FakeCohere) -> None:
    request = openai_request({**HELLO, "stream": True})
    events = [e async for e in provider.generate_stream(request, call(fake, {}))]
    assert isinstance(events[0], StreamStart) and events[0].model == "command-r-plus"
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == Behavior().text
    assert events[-2:] == [Finish("stop"), UsageReport(Usage(37, 12))]
    assert fake.last().body["stream"] is True
    assert fake.last().headers["accept"] == "text/event-stream"


async def test_stream_tool_calls_arrive_whole_and_in_order(
    provider: CohereProvider, fake: FakeCohere
) -> None:
    calls = [("c_a", "get_weather", '{"city": "Madrid"}'), ("c_b", "get_weather", '{"city": "Brasilia"}')]
    fake.set_behavior(Behavior(tool_calls=calls, fragment=3))
    request = openai_request({**HELLO, "tools": [WEATHER_TOOL], "stream": True})
    events = [e async for e in provider.generate_stream(request, call(fake, {}))]
    pieces = [e for e in events if isinstance(e, ToolCallDelta)]
    rebuilt: dict[int, list[str]] = {}
    for piece in pieces:
        if piece.id is not None:
            assert piece.index == len(rebuilt)  # each call starts after the last one's pieces
            rebuilt[piece.index] = [piece.id, piece.name or "", ""]
        rebuilt[piece.index][2] += piece.arguments
    assert [tuple(v) for v in rebuilt.values()] == calls
    assert Finish("tool_calls") in events


async def test_closing_the_stream_cancels_upstream(provider: CohereProvider, fake: FakeCohere) -> None:
    fake.set_behavior(Behavior(text="x" * 400, fragment=2, chunk_delay_s=0.05))
    stream = provider.chat_stream(call(fake, {**HELLO, "stream": True}))
    await anext(stream)
    await anext(stream)
    await stream.aclose()
    assert await asyncio.to_thread(fake.wait_for_cancel, 10.0)


async def test_an_image_is_sent_as_an_image_url_part(provider: CohereProvider, fake: FakeCohere) -> None:
    content = [
        {"type": "text", "text": "What is it?"},
        {"type": "image_url", "image_url": {"url": "https://img.example/cat.png"}},
    ]
    await provider.chat(call(fake, {**HELLO, "messages": [{"role": "user", "content": content}]}))
    assert fake.last().body["messages"][0]["content"] == content


# ---- errors ----------------------------------------------------------------------------------


async def test_rate_limit_keeps_message_and_retry_after(provider: CohereProvider, fake: FakeCohere) -> None:
    for streamed in (False, True):
        fake.enqueue(
            Behavior(status=429, error_message="You are using a Trial key", headers={"retry-after": "7"})
        )
        with pytest.raises(ProviderError) as exc:
            if streamed:
                await anext(aiter(provider.chat_stream(call(fake, {**HELLO, "stream": True}))))
            else:
                await provider.chat(call(fake))
        err = exc.value
        assert (err.status_code, err.message, err.retry_after, err.retryable) == (
            429,
            "You are using a Trial key",
            7.0,
            True,
        )
        assert (err.type, err.code) == ("rate_limit_error", "rate_limit_exceeded")


async def test_too_many_tokens_is_a_context_window_error(provider: CohereProvider, fake: FakeCohere) -> None:
    message = "too many tokens: total number of tokens in the prompt cannot exceed 4081 - received 4928"
    fake.enqueue(Behavior(status=400, error_message=message))
    with pytest.raises(ContextWindowExceededError) as exc:
        await provider.chat(call(fake))
    assert exc.value.message == message and exc.value.code == "context_length_exceeded"
    assert not exc.value.retryable


@pytest.mark.parametrize(
    ("status", "sent", "kind", "retryable"),
    [
        (401, 401, "authentication_error", False),
        (402, 402, "insufficient_quota", False),
        (404, 404, "not_found_error", False),
        (498, 401, "authentication_error", False),
        (499, 499, "api_error", False),
        (500, 500, "api_error", True),
        (503, 503, "service_unavailable", True),
    ],
)
async def test_statuses_are_mapped(
    provider: CohereProvider, fake: FakeCohere, status: int, sent: int, kind: str, retryable: bool
) -> None:
    fake.enqueue(Behavior(status=status, error_message=f"cohere says {status}"))
    with pytest.raises(ProviderError) as exc:
        await provider.chat(call(fake))
    assert (exc.value.status_code, exc.value.type, exc.value.retryable) == (sent, kind, retryable)
    assert exc.value.message == f"cohere says {status}"


async def test_a_missing_or_wrong_key_is_refused_by_the_fake(
    provider: CohereProvider, fake: FakeCohere, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COHERE_API_KEY", raising=False)
    monkeypatch.delenv("CO_API_KEY", raising=False)
    with pytest.raises(ProviderError) as exc:
        await provider.chat(call(fake, api_key=None))
    assert (exc.value.status_code, exc.value.message) == (401, "no api key supplied")
    monkeypatch.setenv("COHERE_API_KEY", KEY)
    assert (await provider.chat(call(fake, api_key=None))).status == 200


async def test_an_echoed_key_is_scrubbed(provider: CohereProvider, fake: FakeCohere) -> None:
    fake.enqueue(Behavior(status=500, error_message=f"bad header Bearer {KEY}"))
    with pytest.raises(ProviderError) as exc:
        await provider.chat(call(fake))
    assert KEY not in exc.value.message


async def test_the_fake_refuses_what_cohere_refuses(fake: FakeCohere) -> None:
    auth = {"authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=fake.base_url) as client:
        no_id = {"model": "m", "messages": [{"role": "tool", "content": "x"}]}
        resp = await client.post("/v2/chat", json=no_id, headers=auth)
        assert resp.status_code == 400 and "tool_call_id" in resp.json()["message"]
        openai_field = {"model": "m", "messages": [{"role": "user", "content": "x"}], "top_p": 0.5}
        resp = await client.post("/v2/chat", json=openai_field, headers=auth)
        assert resp.status_code == 400 and "top_p" in resp.json()["message"]
        resp = await client.post(
            "/v2/chat", json={"model": "m", "messages": [{"role": "user", "content": "x"}]}
        )
        assert resp.status_code == 401


async def test_stream_errors_and_truncation(provider: CohereProvider, fake: FakeCohere) -> None:
    fake.enqueue(Behavior(stream_error="internal generation failure"))
    with pytest.raises(ProviderError) as exc:
        _ = [e async for e in provider.chat_stream(call(fake, {**HELLO, "stream": True}))]
    assert (exc.value.status_code, exc.value.message) == (500, "internal generation failure")
    fake.enqueue(Behavior(end_without_message_end=True))
    with pytest.raises(ProviderError) as exc2:
        _ = [e async for e in provider.chat_stream(call(fake, {**HELLO, "stream": True}))]
    assert (exc2.value.status_code, exc2.value.code) == (502, "stream_truncated")


async def test_a_slow_upstream_times_out(provider: CohereProvider, fake: FakeCohere) -> None:
    fake.enqueue(Behavior(delay_s=2.0))
    with pytest.raises(ProviderTimeoutError) as exc:
        await provider.chat(call(fake, timeout=0.3))
    assert exc.value.retryable


async def test_what_cohere_cannot_take_is_a_400_before_any_call(
    provider: CohereProvider, fake: FakeCohere
) -> None:
    image = {"type": "image_url", "image_url": {"url": "https://img.example/a.png"}}
    body = {**HELLO, "messages": [{"role": "system", "content": [image]}, *HELLO["messages"]]}
    with pytest.raises(ProviderError) as exc:
        await provider.chat(call(fake, body))
    assert (exc.value.status_code, exc.value.param) == (400, "messages.0.content")
    named = {
        **HELLO,
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "function", "function": {"name": "nope"}},
    }
    with pytest.raises(ProviderError) as exc2:
        await provider.chat(call(fake, named))
    assert (exc2.value.status_code, exc2.value.param) == (400, "tool_choice")
    assert not fake.requests


async def test_unreachable(provider: CohereProvider, fake: FakeCohere) -> None:
    with pytest.raises(ProviderUnreachableError):
        await provider.chat(call(fake, api_base=f"http://127.0.0.1:{free_port()}"))


# ---- parameters ------------------------------------------------------------------------------


async def test_unsupported_parameters_are_refused_or_dropped(
    provider: CohereProvider, fake: FakeCohere
) -> None:
    with pytest.raises(ProviderError) as exc:
        await provider.chat(call(fake, {**HELLO, "logit_bias": {"1": 2}}))
    assert (exc.value.status_code, exc.value.param) == (400, "logit_bias")
    with pytest.raises(ProviderError) as exc2:
        await provider.chat(call(fake, {**HELLO, "parallel_tool_calls": False}))
    assert (exc2.value.status_code, exc2.value.param) == (400, "parallel_tool_calls")
    assert not fake.requests
    body = {**HELLO, "logit_bias": {"1": 2}, "parallel_tool_calls": False}
    assert (await provider.chat(call(fake, body, params={"drop_params": True}))).status == 200
    assert set(fake.last().body) == {"model", "messages"}


async def test_typed_requests_from_another_door(provider: CohereProvider, fake: FakeCohere) -> None:
    # The Messages door's typed request: its extras are its own business, never sent here.
    request = GenerationRequest(
        model="x",
        messages=[Message("system", [TextPart("sys")]), Message("user", [TextPart("hi")])],
        max_tokens=20,
        extra={"metadata": {"user_id": "u"}},
        source_format="anthropic_messages",
        reasoning={"type": "enabled", "budget_tokens": 2048},
    )
    resp = await provider.generate(request, call(fake, {}))
    assert resp.text == Behavior().text
    assert fake.last().body["thinking"] == {"type": "enabled", "token_budget": 2048}
    assert "metadata" not in fake.last().body


# ---- embeddings ------------------------------------------------------------------------------


def _floats(b64: str) -> list[float]:
    raw = base64.b64decode(b64)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


async def test_embeddings_float_and_base64(provider: CohereProvider, fake: FakeCohere) -> None:
    texts = ["alpha beta", "gamma"]
    resp = await provider.embeddings(call(fake, {"model": "e", "input": texts}, upstream_model="embed-v4.0"))
    body = orjson.loads(resp.body)
    assert [d["embedding"] for d in body["data"]] == [vector_for(t) for t in texts]
    assert body["usage"]["prompt_tokens"] == sum(embed_tokens(t) for t in texts)
    assert fake.last().body == {
        "model": "embed-v4.0",
        "texts": texts,
        "input_type": "search_document",
        "embedding_types": ["float"],
    }
    b64 = await provider.embeddings(
        call(
            fake, {"model": "e", "input": "gamma", "encoding_format": "base64", "input_type": "search_query"}
        )
    )
    assert _floats(orjson.loads(b64.body)["data"][0]["embedding"]) == vector_for("gamma")
    assert fake.last().body["input_type"] == "search_query"


async def test_embeddings_over_96_inputs_are_split(provider: CohereProvider, fake: FakeCohere) -> None:
    texts = [f"text {i}" for i in range(100)]
    resp = await provider.embeddings(call(fake, {"model": "e", "input": texts, "dimensions": 256}))
    vectors = [d["embedding"] for d in orjson.loads(resp.body)["data"]]
    assert vectors == [vector_for(t, 256) for t in texts]
    assert sorted(len(r.body["texts"]) for r in fake.requests) == [4, 96]
    assert resp.usage == Usage(sum(embed_tokens(t) for t in texts))


async def test_embeddings_refuse_what_cohere_cannot_take(provider: CohereProvider, fake: FakeCohere) -> None:
    with pytest.raises(ProviderError) as exc:
        await provider.embeddings(call(fake, {"model": "e", "input": [1, 2, 3]}))
    assert exc.value.status_code == 400
    with pytest.raises(ProviderError) as exc2:
        await provider.embeddings(call(fake, {"model": "e", "input": "x", "input_type": "poems"}))
    assert (exc2.value.status_code, exc2.value.param) == (400, "input_type")
    assert not fake.requests
