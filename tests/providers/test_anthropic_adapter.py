"""The native Anthropic adapter against a fake Anthropic Messages API on loopback.

The fake (tests/support/fake_anthropic.py) refuses what the real API refuses, so every request
that reaches an answer here was a valid Messages request; the recorded bodies are checked too.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import pytest

from gateway.config import ModelEntry
from gateway.routing.deployment import Deployment
from providers.anthropic import AnthropicProvider
from providers.anthropic.chat import messages_url
from providers.contract import ProviderCall
from providers.errors import ContextWindowExceededError, ProviderError, ProviderTimeoutError
from providers.formats import anthropic_messages
from providers.http import build_client
from providers.registry import ProviderRegistry
from providers.schema import (
    Finish,
    GenerationRequest,
    Message,
    ReasoningDelta,
    StreamEvent,
    StreamStart,
    TextDelta,
    TextPart,
    ToolCallDelta,
    UsageReport,
)
from providers.usage import Usage
from tests.support.fake_anthropic import Behavior, FakeAnthropic

pytestmark = pytest.mark.asyncio(loop_scope="session")

KEY = "sk-ant-adapter-test-secret"
USER = [{"role": "user", "content": "hi"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
HOUR = {"type": "ephemeral", "ttl": "1h"}
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


@pytest.fixture(scope="module")
def server() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(api_key=KEY) as fake:
        yield fake


@pytest.fixture
def fake(server: FakeAnthropic) -> FakeAnthropic:
    server.reset()
    return server


@pytest.fixture(scope="module")
async def provider() -> AsyncIterator[AnthropicProvider]:
    client = build_client()
    yield AnthropicProvider(client)
    await client.aclose()


def call(fake: FakeAnthropic, body: dict[str, Any] | None = None, **kw: Any) -> ProviderCall:
    args: dict[str, Any] = {
        "upstream_model": "claude-test",
        "body": {"model": "public", "messages": USER} if body is None else body,
        "api_base": fake.base_url,
        "api_key": KEY,
    }
    args.update(kw)
    return ProviderCall(**args)


async def chat(provider: AnthropicProvider, c: ProviderCall) -> dict[str, Any]:
    resp = await provider.chat(c)
    assert resp.status == 200
    return orjson.loads(resp.body)


async def events_of(provider: AnthropicProvider, request: GenerationRequest, c: ProviderCall) -> list:
    return [e async for e in provider.generate_stream(request, c)]


# ---- requests ----------------------------------------------------------------------------------


async def test_text_with_system_prompt_headers_and_default_max_tokens(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    body = {"model": "public", "messages": [{"role": "system", "content": "Be brief."}, *USER]}
    answer = await chat(provider, call(fake, body))
    assert answer["choices"][0]["message"]["content"] == Behavior().text
    assert answer["choices"][0]["finish_reason"] == "stop"
    sent = fake.last()
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == KEY and sent.headers["anthropic-version"] == "2023-06-01"
    assert "anthropic-beta" not in sent.headers
    assert sent.body == {
        "model": "claude-test",
        "max_tokens": anthropic_messages.DEFAULT_MAX_TOKENS,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "system": "Be brief.",
    }


async def test_deployment_defaults_and_beta_headers(provider: AnthropicProvider, fake: FakeAnthropic) -> None:
    params = {
        "max_tokens": 321,
        "temperature": 0.25,
        "stop": ["END"],
        "anthropic_beta": ["prompt-caching-2024-07-31"],
        "extra_headers": {"anthropic-beta": "output-128k-2025-02-19", "x-trace": "t1"},
    }
    await chat(provider, call(fake, params=params))
    sent = fake.last()
    assert (sent.body["max_tokens"], sent.body["temperature"], sent.body["stop_sequences"]) == (
        321,
        0.25,
        ["END"],
    )
    assert sent.headers["anthropic-beta"] == "prompt-caching-2024-07-31,output-128k-2025-02-19"
    assert sent.headers["x-trace"] == "t1"
    # The caller's own values win over the deployment's.
    body = {"model": "p", "messages": USER, "max_tokens": 5, "temperature": 0.5, "stop": "X"}
    await chat(provider, call(fake, body, params=params))
    sent = fake.last()
    assert (sent.body["max_tokens"], sent.body["temperature"], sent.body["stop_sequences"]) == (5, 0.5, ["X"])


async def test_multi_turn_tools_images_and_tool_results(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    body = {
        "model": "p",
        "messages": [
            {"role": "system", "content": "S"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather there?", "cache_control": {"type": "ephemeral"}},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/oslo.jpg"}},
                ],
            },
            {
                "role": "assistant",
                "content": "Checking.",
                "tool_calls": [_call("toolu_a", '{"city":"Oslo"}'), _call("toolu_b", '{"city":"Rome"}')],
            },
            {"role": "tool", "tool_call_id": "toolu_a", "content": "-3C"},
            {"role": "tool", "tool_call_id": "toolu_b", "content": "18C"},
            {"role": "user", "content": "Compare."},
        ],
        "tools": [WEATHER],
        "tool_choice": {"type": "function", "function": {"name": "weather"}},
        "parallel_tool_calls": False,
        "top_k": 5,
    }  # fmt: skip
    await chat(provider, call(fake, body))
    sent = fake.last().body
    assert sent["system"] == "S"
    assert sent["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather there?", "cache_control": {"type": "ephemeral"}},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/oslo.jpg"}},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_a", "name": "weather", "input": {"city": "Oslo"}},
                {"type": "tool_use", "id": "toolu_b", "name": "weather", "input": {"city": "Rome"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_a", "content": "-3C"},
                {"type": "tool_result", "tool_use_id": "toolu_b", "content": "18C"},
                {"type": "text", "text": "Compare."},
            ],
        },
    ]
    assert sent["tools"] == [
        {
            "name": "weather",
            "description": "Weather in a city",
            "input_schema": WEATHER["function"]["parameters"],
        }
    ]
    assert sent["tool_choice"] == {"type": "tool", "name": "weather", "disable_parallel_tool_use": True}
    assert sent["top_k"] == 5


@pytest.mark.parametrize(
    ("choice", "expected"),
    [("auto", {"type": "auto"}), ("required", {"type": "any"}), ("none", {"type": "none"})],
)
async def test_tool_choice_out(
    provider: AnthropicProvider, fake: FakeAnthropic, choice: str, expected: dict[str, Any]
) -> None:
    await chat(
        provider, call(fake, {"model": "p", "messages": USER, "tools": [WEATHER], "tool_choice": choice})
    )
    assert fake.last().body["tool_choice"] == expected


async def test_tool_use_answer_becomes_tool_calls(provider: AnthropicProvider, fake: FakeAnthropic) -> None:
    fake.set_behavior(
        Behavior(text="Let me look.", tool_uses=[("toolu_1", "weather", {"city": "Oslo", "days": [1, 2]})])
    )
    answer = await chat(provider, call(fake, {"model": "p", "messages": USER, "tools": [WEATHER]}))
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Let me look."
    [tool_call] = choice["message"]["tool_calls"]
    assert (tool_call["id"], tool_call["function"]["name"]) == ("toolu_1", "weather")
    assert orjson.loads(tool_call["function"]["arguments"]) == {"city": "Oslo", "days": [1, 2]}


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
    ],
)
async def test_stop_reasons(
    provider: AnthropicProvider, fake: FakeAnthropic, stop_reason: str, finish: str
) -> None:
    fake.set_behavior(
        Behavior(stop_reason=stop_reason, stop_sequence="END" if stop_reason == "stop_sequence" else None)
    )
    answer = await chat(provider, call(fake, {"model": "p", "messages": USER, "stop": ["END"]}))
    assert answer["choices"][0]["finish_reason"] == finish
    assert fake.last().body["stop_sequences"] == ["END"]
    fake.set_behavior(Behavior(stop_reason=stop_reason))
    events = await events_of(provider, _typed("hi"), call(fake))
    assert [e for e in events if isinstance(e, Finish)] == [Finish(finish)]


async def test_usage_counts_cache_reads_and_writes(provider: AnthropicProvider, fake: FakeAnthropic) -> None:
    behavior = Behavior(
        input_tokens=10, output_tokens=4, cache_read_input_tokens=100, cache_creation_input_tokens=20
    )
    fake.set_behavior(behavior)
    resp = await provider.chat(call(fake))
    assert resp.usage == Usage(130, 4, cache_read_tokens=100, cache_write_tokens=20)
    usage = orjson.loads(resp.body)["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (130, 4, 134)
    assert usage["prompt_tokens_details"] == {"cached_tokens": 100}
    events = await events_of(provider, _typed("hi"), call(fake))
    assert events[-1] == UsageReport(Usage(130, 4, cache_read_tokens=100, cache_write_tokens=20))


async def test_json_output_asked_for_as_a_forced_tool(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}
    body = {
        "model": "p",
        "messages": USER,
        "response_format": {"type": "json_schema", "json_schema": {"name": "calc", "schema": schema}},
    }
    fake.set_behavior(
        Behavior(text="", tool_uses=[("toolu_j", anthropic_messages.JSON_TOOL, {"answer": 42})])
    )
    answer = await chat(provider, call(fake, body))
    sent = fake.last().body
    assert sent["tools"] == [
        {
            "name": "json_tool_call",
            "description": "Respond with a JSON object that follows this schema.",
            "input_schema": schema,
        }
    ]
    assert sent["tool_choice"] == {"type": "tool", "name": "json_tool_call"}
    choice = answer["choices"][0]
    assert orjson.loads(choice["message"]["content"]) == {"answer": 42}
    assert choice["finish_reason"] == "stop" and "tool_calls" not in choice["message"]
    # Streamed: the tool's input arrives as text, in order.
    chunks = [orjson.loads(c[6:]) async for c in provider.chat_stream(call(fake, {**body, "stream": True}))]
    text = "".join(ch["choices"][0]["delta"].get("content") or "" for ch in chunks if ch["choices"])
    assert orjson.loads(text) == {"answer": 42}
    finishes = [
        ch["choices"][0]["finish_reason"]
        for ch in chunks
        if ch["choices"] and ch["choices"][0]["finish_reason"]
    ]
    assert finishes == ["stop"]


async def test_json_object_mode_uses_an_any_object_schema(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    fake.set_behavior(Behavior(text="", tool_uses=[("toolu_j", "json_tool_call", {"ok": True})]))
    body = {"model": "p", "messages": USER, "response_format": {"type": "json_object"}}
    answer = await chat(provider, call(fake, body))
    assert fake.last().body["tools"][0]["input_schema"] == {"type": "object"}
    assert orjson.loads(answer["choices"][0]["message"]["content"]) == {"ok": True}


async def test_extended_thinking_from_reasoning_effort_and_thinking(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    fake.set_behavior(Behavior(thinking="Let me think.", text="42"))
    answer = await chat(provider, call(fake, {"model": "p", "messages": USER, "reasoning_effort": "medium"}))
    sent = fake.last().body
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert sent["max_tokens"] == anthropic_messages.DEFAULT_MAX_TOKENS + 2048
    message = answer["choices"][0]["message"]
    assert (message["content"], message["reasoning_content"]) == ("42", "Let me think.")
    thinking = {"type": "enabled", "budget_tokens": 8000}
    await chat(
        provider, call(fake, {"model": "p", "messages": USER, "max_tokens": 9000, "thinking": thinking})
    )
    assert fake.last().body["thinking"] == thinking
    # LiteLLM's ``thinking`` parameter without max_tokens: room is made above the budget.
    await chat(provider, call(fake, {"model": "p", "messages": USER, "thinking": thinking}))
    assert fake.last().body["max_tokens"] == anthropic_messages.DEFAULT_MAX_TOKENS + 8000
    # Streamed: thinking_delta events become reasoning, before the text.
    events = await events_of(provider, _typed("hi", reasoning={"effort": "low"}), call(fake))
    kinds = [type(e) for e in events if isinstance(e, ReasoningDelta | TextDelta)]
    assert kinds.index(TextDelta) > 0 and set(kinds[: kinds.index(TextDelta)]) == {ReasoningDelta}
    assert "".join(e.text for e in events if isinstance(e, ReasoningDelta)) == "Let me think."


async def test_cache_control_from_the_messages_door_is_passed_through(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    body = {
        "model": "claude",
        "max_tokens": 2000,
        "system": [{"type": "text", "text": "Long policy.", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Doc", "cache_control": HOUR}]}],
        "top_k": 3,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
    }  # fmt: skip
    request = anthropic_messages.parse_request(body)
    answer = await provider.generate(request, call(fake))
    assert answer.text == Behavior().text
    sent = fake.last().body
    assert sent == {**body, "model": "claude-test"}


async def test_parameters_anthropic_cannot_take_are_refused_or_dropped(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    for field, value in (("seed", 7), ("logit_bias", {"1": 2}), ("presence_penalty", 0.5)):
        with pytest.raises(ProviderError) as exc:
            await provider.chat(call(fake, {"model": "p", "messages": USER, field: value}))
        assert (exc.value.status_code, exc.value.param) == (400, field)
        await chat(
            provider, call(fake, {"model": "p", "messages": USER, field: value}, params={"drop_params": True})
        )
        assert field not in fake.last().body
    assert len(fake.requests) == 3  # only the dropped ones went upstream


# ---- streams -----------------------------------------------------------------------------------


async def test_stream_turns_every_event_type_into_typed_events(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    first = {"city": "Oslo", "when": "now"}
    second = {"city": "Rome", "units": ["C", "F"]}
    fake.set_behavior(
        Behavior(
            thinking="Hmm.",
            text="Checking both.",
            tool_uses=[("toolu_1", "weather", first), ("toolu_2", "weather", second)],
            fragment=3,
            cache_read_input_tokens=5,
        )
    )
    events = await events_of(provider, _typed("weather?"), call(fake))
    assert isinstance(events[0], StreamStart) and events[0].id.startswith("msg_")
    assert events[0].model == "claude-test"
    assert "".join(e.text for e in events if isinstance(e, ReasoningDelta)) == "Hmm."
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Checking both."
    pieces = [e for e in events if isinstance(e, ToolCallDelta)]
    # Whole and in order: each call opens with its id and name, then only its own fragments.
    assert [(p.index, p.id, p.name) for p in pieces if p.id is not None] == [
        (0, "toolu_1", "weather"),
        (1, "toolu_2", "weather"),
    ]
    indexes = [p.index for p in pieces]
    assert indexes == sorted(indexes)
    for i, expected in enumerate((first, second)):
        assert orjson.loads("".join(p.arguments for p in pieces if p.index == i)) == expected
    assert events[-2:] == [Finish("tool_calls"), UsageReport(Usage(26, 9, cache_read_tokens=5))]
    assert fake.last().body["stream"] is True


async def test_openai_chunks_from_the_stream(provider: AnthropicProvider, fake: FakeAnthropic) -> None:
    fake.set_behavior(Behavior(text="abcdefghij", fragment=4))
    raw = [c async for c in provider.chat_stream(call(fake))]
    chunks = [orjson.loads(c.removeprefix(b"data: ")) for c in raw]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert (
        "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == "abcdefghij"
    )
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 9


async def test_error_event_mid_stream_is_a_retryable_error(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    fake.set_behavior(
        Behavior(
            text="abcdefghij",
            fragment=2,
            error_event=("overloaded_error", "Overloaded"),
            error_after_deltas=2,
        )
    )
    got: list[StreamEvent] = []
    with pytest.raises(ProviderError) as exc:
        async for event in provider.generate_stream(_typed("hi"), call(fake)):
            got.append(event)
    assert (exc.value.status_code, exc.value.type, exc.value.message) == (
        529,
        "overloaded_error",
        "Overloaded",
    )
    assert exc.value.retryable
    assert "".join(e.text for e in got if isinstance(e, TextDelta)) == "abcd"


async def test_stream_cut_before_message_stop_is_an_error(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    fake.set_behavior(Behavior(end_without_stop=True))
    with pytest.raises(ProviderError) as exc:
        await events_of(provider, _typed("hi"), call(fake))
    assert (exc.value.status_code, exc.value.code) == (502, "stream_truncated")


async def test_closing_the_stream_cancels_the_upstream(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    fake.set_behavior(Behavior(text="x" * 400, fragment=1, chunk_delay_s=0.02))
    stream = provider.generate_stream(_typed("hi"), call(fake))
    await anext(stream)
    await anext(stream)
    await stream.aclose()
    assert await asyncio.to_thread(fake.wait_for_cancel, 10.0)


# ---- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind", "message", "code"),
    [
        (400, "invalid_request_error", "messages.0: bad", "invalid_request_error"),
        (401, "authentication_error", "invalid x-api-key", "authentication_error"),
        (403, "permission_error", "no access to this model", "permission_error"),
        (404, "not_found_error", "model: claude-nope", "model_not_found"),
        (
            413,
            "request_too_large",
            "Request exceeds the maximum allowed number of bytes.",
            "request_too_large",
        ),
        (
            429,
            "rate_limit_error",
            "Number of request tokens has exceeded your rate limit",
            "rate_limit_exceeded",
        ),
        (500, "api_error", "Internal server error", "api_error"),
        (529, "overloaded_error", "Overloaded", "overloaded_error"),
    ],
)
async def test_error_statuses_are_mapped(
    provider: AnthropicProvider, fake: FakeAnthropic, status: int, kind: str, message: str, code: str
) -> None:
    headers = {"retry-after": "7"} if status == 429 else {}
    for stream in (False, True):
        fake.enqueue(Behavior(status=status, error_type=kind, error_message=message, headers=headers))
        with pytest.raises(ProviderError) as exc:
            if stream:
                await events_of(provider, _typed("hi"), call(fake))
            else:
                await provider.chat(call(fake))
        err = exc.value
        assert (err.status_code, err.type, err.message, err.code) == (status, kind, message, code)
        assert err.retryable == (status in (429, 500, 529))
        assert err.retry_after == (7.0 if status == 429 else None)
        assert not err.context_window_exceeded


async def test_prompt_too_long_is_context_window_exceeded(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    message = "prompt is too long: 215000 tokens > 200000 maximum"
    fake.set_behavior(Behavior(status=400, error_type="invalid_request_error", error_message=message))
    with pytest.raises(ContextWindowExceededError) as exc:
        await provider.chat(call(fake))
    assert (exc.value.status_code, exc.value.message, exc.value.code) == (
        400,
        message,
        "context_length_exceeded",
    )
    assert exc.value.context_window_exceeded and not exc.value.retryable


async def test_echoed_key_is_scrubbed_and_a_missing_key_is_refused(
    provider: AnthropicProvider, fake: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.set_behavior(Behavior(status=401, error_type="authentication_error", error_message=f"bad key {KEY}"))
    with pytest.raises(ProviderError) as exc:
        await provider.chat(call(fake))
    assert KEY not in exc.value.message and "bad key" in exc.value.message
    fake.reset()
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(ProviderError) as exc2:
        await provider.chat(call(fake, api_key=None))
    assert (exc2.value.status_code, exc2.value.message) == (401, "x-api-key header is required")
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)  # the documented fallback
    await chat(provider, call(fake, api_key=None))


async def test_a_slow_upstream_times_out_and_is_abandoned(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    fake.set_behavior(Behavior(delay_s=3.0))
    with pytest.raises(ProviderTimeoutError) as exc:
        await provider.chat(call(fake, timeout=0.3))
    assert exc.value.retryable
    assert await asyncio.to_thread(fake.wait_for_cancel, 10.0)


async def test_unreachable_upstream(provider: AnthropicProvider) -> None:
    from tests.support.gateway_process import free_port

    c = ProviderCall(
        "claude-test",
        {"model": "p", "messages": USER},
        api_base=f"http://127.0.0.1:{free_port()}",
        api_key=KEY,
    )
    with pytest.raises(ProviderError) as exc:
        await provider.chat(c)
    assert exc.value.status_code == 502 and exc.value.retryable


# ---- the fake refuses what the API refuses -----------------------------------------------------


VERSION = {"anthropic-version": "2023-06-01"}
TOOL_USE = {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}
ORPHAN_RESULT = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "x"}]}


def _body(messages: list[dict[str, Any]] = USER, **extra: Any) -> dict[str, Any]:
    return {"model": "m", "max_tokens": 5, "messages": messages, **extra}


@pytest.mark.parametrize(
    ("headers", "body", "status", "fragment"),
    [
        (VERSION, _body(), 401, "x-api-key"),
        ({"x-api-key": KEY}, _body(), 400, "anthropic-version"),
        (None, {"model": "m", "messages": USER}, 400, "max_tokens: Field required"),
        (None, _body([{"role": "system", "content": "x"}, *USER]), 400, 'Unexpected role "system"'),
        (None, _body([{"role": "user", "content": ""}]), 400, "non-empty content"),
        (None, _body([{"role": "user", "content": [{"type": "text", "text": ""}]}]), 400, "non-empty"),
        (None, _body(response_format={}), 400, "Extra inputs"),
        (None, _body([ORPHAN_RESULT]), 400, "tool_use_id"),
        (
            None,
            _body([*USER, TOOL_USE, {"role": "user", "content": "no result"}]),
            400,
            "without `tool_result`",
        ),
    ],
)
async def test_the_fake_refuses_what_the_api_refuses(
    fake: FakeAnthropic, headers: dict[str, str] | None, body: dict, status: int, fragment: str
) -> None:
    sent = headers if headers is not None else {"x-api-key": KEY, **VERSION}
    async with httpx.AsyncClient() as client:
        resp = await client.post(fake.base_url + "/v1/messages", json=body, headers=sent)
    assert resp.status_code == status
    err = resp.json()
    assert err["type"] == "error" and fragment in err["error"]["message"]
    # Consecutive user turns are merged, as the API documents: accepted.
    ok = {"model": "m", "max_tokens": 5, "messages": [*USER, *USER]}
    async with httpx.AsyncClient() as client:
        resp = await client.post(
            fake.base_url + "/v1/messages",
            json=ok,
            headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"},
        )
    assert resp.status_code == 200


# ---- configuration -----------------------------------------------------------------------------


async def test_api_base_defaults_and_spellings() -> None:
    assert str(messages_url(None)) == "https://api.anthropic.com/v1/messages"
    for base in (
        "https://proxy.example/anthropic",
        "https://proxy.example/anthropic/v1",
        "https://proxy.example/anthropic/v1/messages/",
    ):
        assert str(messages_url(base)) == "https://proxy.example/anthropic/v1/messages"
    entry = ModelEntry.model_validate(
        {"model_name": "claude", "params": {"model": "anthropic/claude-sonnet-4-5"}}
    )
    dep = Deployment.from_entry(entry)
    assert (dep.provider, dep.upstream_model, dep.api_base) == (
        "anthropic",
        "claude-sonnet-4-5",
        "https://api.anthropic.com",
    )


async def test_registered_by_default() -> None:
    registry = ProviderRegistry.default()
    assert registry.capabilities("anthropic") == frozenset({"chat"})
    assert isinstance(registry.get("anthropic"), AnthropicProvider)


def _call(call_id: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": "weather", "arguments": arguments}}


def _typed(text: str, **kw: Any) -> GenerationRequest:
    return GenerationRequest(model="public", messages=[Message("user", [TextPart(text)])], **kw)
