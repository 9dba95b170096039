"""End to end: a real ``switchyard serve`` process with ``anthropic/`` deployments, the fake
Anthropic Messages API behind it, and the official ``openai`` and ``anthropic`` SDKs in front.

The fake refuses any request the real API would refuse (tests/support/fake_anthropic.py), so a
200 here also means the gateway's translation was a valid Messages request.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import orjson
import pytest

from tests.support.fake_anthropic import Behavior, FakeAnthropic
from tests.support.gateway_process import GatewayProcess, gateway_process

MASTER_KEY = "sk-master-anthropic-e2e"
UPSTREAM_KEY = "sk-ant-upstream-e2e-secret"
USER = [{"role": "user", "content": "What is the weather in Oslo and Rome?"}]
WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER = {
    "type": "function",
    "function": {"name": "weather", "description": "Weather in a city", "parameters": WEATHER_SCHEMA},
}
OSLO = {"city": "Oslo", "hourly": [1, 2, 3], "note": 'quote " and unicode \u00e6'}
ROME = {"city": "Rome"}
TWO_CALLS = Behavior(text="Checking.", tool_uses=[("toolu_1", "weather", OSLO), ("toolu_2", "weather", ROME)])
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


def deployment(name: str, upstream: str, fake: FakeAnthropic, **params: Any) -> dict[str, Any]:
    return {
        "model_name": name,
        "params": {
            "model": f"anthropic/{upstream}",
            "api_base": fake.base_url,
            "api_key": UPSTREAM_KEY,
            **params,
        },
    }


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(api_key=UPSTREAM_KEY) as server:
        yield server


@pytest.fixture(scope="module")
def gw(fake: FakeAnthropic) -> Iterator[GatewayProcess]:
    config = {
        "model_list": [
            deployment("claude", "claude-main", fake),
            deployment("claude-defaults", "claude-defaults", fake, max_tokens=333, temperature=0.3),
            deployment("claude-429", "claude-429", fake),
            deployment("claude-long", "claude-long", fake),
            deployment("claude-busy", "claude-busy", fake),
        ],
        "general_settings": {"master_key": MASTER_KEY},
        "router_settings": {"num_retries": 0},
    }
    with gateway_process(config) as g:
        yield g
        assert UPSTREAM_KEY not in g.logs()


@pytest.fixture(autouse=True)
def _fresh(fake: FakeAnthropic) -> None:
    fake.reset()


def oai(gw: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url + "/v1", api_key=MASTER_KEY, max_retries=0, timeout=30)


def ant(gw: GatewayProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.base_url, api_key=MASTER_KEY, max_retries=0, timeout=30)


# ---- the openai SDK on /v1/chat/completions ----------------------------------------------------


def test_text_with_system_prompt(gw: GatewayProcess, fake: FakeAnthropic) -> None:
    fake.set_behavior(Behavior(text="Cold in Oslo."))
    messages = [{"role": "system", "content": "Be brief."}, *USER]
    answer = oai(gw).chat.completions.create(model="claude", messages=messages)
    assert answer.choices[0].message.content == "Cold in Oslo."
    assert answer.choices[0].finish_reason == "stop"
    sent = fake.last("claude-main")
    assert sent.headers["x-api-key"] == UPSTREAM_KEY and sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.body["system"] == "Be brief."
    assert sent.body["max_tokens"] == 4096  # Anthropic requires it; the documented default
    # The deployment's own defaults win over the built-in one.
    oai(gw).chat.completions.create(model="claude-defaults", messages=USER)
    sent = fake.last("claude-defaults")
    assert (sent.body["max_tokens"], sent.body["temperature"]) == (333, 0.3)


def test_stream_text_and_usage_equal_to_upstream(gw: GatewayProcess, fake: FakeAnthropic) -> None:
    upstream = Behavior(
        text="Sunny in Rome, cold in Oslo.",
        fragment=3,
        input_tokens=40,
        output_tokens=12,
        cache_read_input_tokens=1000,
        cache_creation_input_tokens=200,
    )
    fake.set_behavior(upstream)
    chunks = list(
        oai(gw).chat.completions.create(
            model="claude", messages=USER, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == upstream.text
    usage = chunks[-1].usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (1240, 12, 1252)
    assert usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens == 1000
    assert fake.last().body["stream"] is True
    # Not streamed: the same numbers.
    answer = oai(gw).chat.completions.create(model="claude", messages=USER)
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (1240, 12)


def test_tools_not_streamed(gw: GatewayProcess, fake: FakeAnthropic) -> None:
    fake.set_behavior(TWO_CALLS)
    answer = oai(gw).chat.completions.create(
        model="claude", messages=USER, tools=[WEATHER], tool_choice="required"
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert [(c.id, c.function.name) for c in calls] == [("toolu_1", "weather"), ("toolu_2", "weather")]
    assert [orjson.loads(c.function.arguments) for c in calls] == [OSLO, ROME]
    sent = fake.last().body
    assert sent["tools"] == [
        {"name": "weather", "description": "Weather in a city", "input_schema": WEATHER_SCHEMA}
    ]
    assert sent["tool_choice"] == {"type": "any"}


def test_tools_streamed_arrive_whole_and_in_order(gw: GatewayProcess, fake: FakeAnthropic) -> None:
    fake.set_behavior(TWO_CALLS)
    stream = oai(gw).chat.completions.create(model="claude", messages=USER, tools=[WEATHER], stream=True)
    calls: dict[int, dict[str, str]] = {}
    order: list[int] = []
    finish = None
    for chunk in stream:
        if not chunk.choices:
            continue
        for piece in chunk.choices[0].delta.tool_calls or []:
            if piece.id is not None:
                calls[piece.index] = {"id": piece.id, "name": piece.function.name, "arguments": ""}
                order.append(piece.index)
            assert not order or piece.index == order[-1], "pieces of one call are not interleaved"
            calls[piece.index]["arguments"] += piece.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert order == [0, 1] and finish == "tool_calls"
    assert [(calls[i]["id"], calls[i]["name"]) for i in order] == [
        ("toolu_1", "weather"),
        ("toolu_2", "weather"),
    ]
    assert orjson.loads(calls[0]["arguments"]) == OSLO
    assert orjson.loads(calls[1]["arguments"]) == ROME


def test_tool_result_follow_up_turn(gw: GatewayProcess, fake: FakeAnthropic) -> None:
    fake.set_behavior(Behavior(text="Oslo -3C, Rome 18C."))
    messages = [
        *USER,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                _weather_call("toolu_1", orjson.dumps(OSLO).decode()),
                _weather_call("toolu_2", '{"city":"Rome"}'),
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "-3C"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "18C"},
    ]  # fmt: skip
    answer = oai(gw).chat.completions.create(model="claude", messages=messages, tools=[WEATHER])
    assert answer.choices[0].message.content == "Oslo -3C, Rome 18C."
    turns = fake.last().body["messages"]
    assert [t["role"] for t in turns] == ["user", "assistant", "user"]
    assert turns[1]["content"] == [
        {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": OSLO},
        {"type": "tool_use", "id": "toolu_2", "name": "weather", "input": ROME},
    ]
    assert turns[2]["content"] == [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "-3C"},
        {"type": "tool_result", "tool_use_id": "toolu_2", "content": "18C"},
    ]


def _weather_call(call_id: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": "weather", "arguments": arguments}}


def test_image_inline_and_by_url(gw: GatewayProcess, fake: FakeAnthropic) -> None:
    content = [
        {"type": "text", "text": "What is in these?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "low"}},
    ]
    oai(gw).chat.completions.create(model="claude", messages=[{"role": "user", "content": content}])
    assert fake.last().body["messages"][0]["content"] == [
        {"type": "text", "text": "What is in these?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


def test_rate_limit_keeps_retry_after(gw: GatewayProcess, fake: FakeAnthropic) -> None:
    message = "Number of request tokens has exceeded your per-minute rate limit"
    fake.set_behavior(
        Behavior(
            status=429, error_type="rate_limit_error", error_message=message, headers={"retry-after": "7"}
        ),
        model="claude-429",
    )
    with pytest.raises(openai.RateLimitError) as exc:
        oai(gw).chat.completions.create(model="claude-429", messages=USER)
    assert exc.value.response.headers["retry-after"] == "7"
    assert message in exc.value.message
    assert UPSTREAM_KEY not in exc.value.response.text


def test_prompt_too_long_is_a_context_window_error(gw: GatewayProcess, fake: FakeAnthropic) -> None:
    message = "prompt is too long: 215000 tokens > 200000 maximum"
    fake.set_behavior(
        Behavior(status=400, error_type="invalid_request_error", error_message=message), model="claude-long"
    )
    with pytest.raises(openai.BadRequestError) as exc:
        oai(gw).chat.completions.create(model="claude-long", messages=USER)
    assert exc.value.code == "context_length_exceeded"
    assert message in exc.value.message


def test_unsupported_parameter_is_a_400_naming_it(gw: GatewayProcess, fake: FakeAnthropic) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        oai(gw).chat.completions.create(model="claude", messages=USER, seed=1)
    assert exc.value.param == "seed"
    assert fake.requests == []


# ---- the anthropic SDK on /v1/messages, routed to this adapter ---------------------------------


def test_anthropic_sdk_plain_passes_the_request_through(gw: GatewayProcess, fake: FakeAnthropic) -> None:
    upstream = Behavior(
        text="Hei!", input_tokens=5, cache_read_input_tokens=50, cache_creation_input_tokens=7
    )
    fake.set_behavior(upstream)
    system = [{"type": "text", "text": "A long cached policy.", "cache_control": {"type": "ephemeral"}}]
    message = ant(gw).messages.create(
        model="claude",
        max_tokens=64,
        system=system,
        messages=[{"role": "user", "content": "Say hi in Norwegian."}],
        stop_sequences=["END"],
        extra_body={"top_k": 4, "temperature": 0.5},  # sampling fields this SDK version no longer names
    )
    assert [(b.type, b.text) for b in message.content] == [("text", "Hei!")]  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    usage = message.usage
    assert (usage.input_tokens, usage.output_tokens) == (5, upstream.output_tokens)
    assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (50, 7)
    assert fake.last().body == {
        "model": "claude-main",
        "max_tokens": 64,
        "system": system,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Say hi in Norwegian."}]}],
        "stop_sequences": ["END"],
        "temperature": 0.5,
        "top_k": 4,
    }


def test_anthropic_sdk_stream_with_thinking_and_tools(gw: GatewayProcess, fake: FakeAnthropic) -> None:
    fake.set_behavior(
        Behavior(
            thinking="Two cities.",
            text="Checking.",
            tool_uses=[("toolu_1", "weather", OSLO), ("toolu_2", "weather", ROME)],
            fragment=4,
        )
    )
    tool = {"name": "weather", "description": "Weather in a city", "input_schema": WEATHER_SCHEMA}
    with ant(gw).messages.stream(
        model="claude",
        max_tokens=4000,
        messages=USER,
        tools=[tool],
        thinking={"type": "enabled", "budget_tokens": 2048},
    ) as stream:
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text", "tool_use", "tool_use"]
    assert final.content[0].thinking == "Two cities."  # type: ignore[union-attr]
    assert final.content[1].text == "Checking."  # type: ignore[union-attr]
    assert [(b.id, b.input) for b in final.content[2:]] == [("toolu_1", OSLO), ("toolu_2", ROME)]  # type: ignore[union-attr]
    assert final.stop_reason == "tool_use"
    sent = fake.last().body
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert sent["tools"] == [tool] and sent["stream"] is True


def test_anthropic_sdk_sees_anthropic_errors(gw: GatewayProcess, fake: FakeAnthropic) -> None:
    fake.set_behavior(
        Behavior(status=529, error_type="overloaded_error", error_message="Overloaded"), model="claude-busy"
    )
    with pytest.raises(anthropic.APIStatusError) as exc:
        ant(gw).messages.create(model="claude-busy", max_tokens=10, messages=USER)
    assert exc.value.status_code == 529
    assert exc.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    assert exc.value.body["error"]["message"] == "Overloaded"  # type: ignore[index]


# ---- extended thinking kept across turns (signatures verified by the fake) ---------------------

THINK = {"type": "enabled", "budget_tokens": 2048}
THINKING_TOOL_USE = Behavior(thinking="Oslo first.", text="", tool_uses=[("toolu_1", "weather", ROME)])


def _tool_turn(tool_use_id: str) -> dict[str, Any]:
    return {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": tool_use_id, "content": "18C"}],
    }


def test_messages_door_sends_signed_thinking_back(gw: GatewayProcess, fake: FakeAnthropic) -> None:
    fake.set_behavior(THINKING_TOOL_USE)
    tool = {"name": "weather", "input_schema": WEATHER_SCHEMA}
    with ant(gw).messages.stream(
        model="claude", max_tokens=4000, messages=USER, tools=[tool], thinking=THINK
    ) as stream:
        first = stream.get_final_message()
    assert first.content[0].type == "thinking" and first.content[0].signature  # type: ignore[union-attr]
    history: Any = [*USER, {"role": "assistant", "content": first.content}, _tool_turn("toolu_1")]
    fake.set_behavior(Behavior(text="18C in Rome."))
    answer = ant(gw).messages.create(
        model="claude", max_tokens=4000, messages=history, tools=[tool], thinking=THINK
    )
    assert answer.content[-1].text == "18C in Rome."  # type: ignore[union-attr]
    assert fake.last().body["messages"][1]["content"][0] == first.content[0].model_dump()

    # Without its signature the block is refused, as Anthropic refuses it.
    unsigned = {"type": "thinking", "thinking": "Oslo first."}
    history[1] = {"role": "assistant", "content": [unsigned, *first.content[1:]]}
    with pytest.raises(anthropic.BadRequestError) as exc:
        ant(gw).messages.create(
            model="claude", max_tokens=4000, messages=history, tools=[tool], thinking=THINK
        )
    assert "signature: Field required" in exc.value.message


def test_chat_door_carries_thinking_blocks_both_ways(gw: GatewayProcess, fake: FakeAnthropic) -> None:
    fake.set_behavior(THINKING_TOOL_USE)
    ask: dict[str, Any] = {
        "model": "claude",
        "tools": [WEATHER],
        "max_tokens": 4000,
        "extra_body": {"thinking": THINK},
    }
    plain = oai(gw).chat.completions.create(messages=USER, **ask).choices[0].message
    blocks = (plain.model_extra or {})["thinking_blocks"]
    assert blocks[0]["thinking"] == "Oslo first." and blocks[0]["signature"]
    assert (plain.model_extra or {})["reasoning_content"] == "Oslo first."

    # Streamed: the text as reasoning_content, the signature in a chunk of its own.
    reasoning, signature = "", None
    for chunk in oai(gw).chat.completions.create(messages=USER, stream=True, **ask):
        delta = chunk.choices[0].delta.model_extra or {} if chunk.choices else {}
        reasoning += delta.get("reasoning_content") or ""
        for block in delta.get("thinking_blocks") or []:
            signature = block["signature"]
    assert [{"type": "thinking", "thinking": reasoning, "signature": signature}] == blocks

    fake.set_behavior(Behavior(text="18C in Rome."))
    assistant = plain.model_dump(exclude_none=True)
    tool_result = {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"}
    answer = oai(gw).chat.completions.create(messages=[*USER, assistant, tool_result], **ask)
    assert answer.choices[0].message.content == "18C in Rome."
    assert fake.last().body["messages"][1]["content"][0] == {"type": "thinking", **blocks[0]}

    # Without them Anthropic refuses the tool-result turn; the gateway passes its 400 on.
    del assistant["thinking_blocks"]
    with pytest.raises(openai.BadRequestError) as exc:
        oai(gw).chat.completions.create(messages=[*USER, assistant, tool_result], **ask)
    assert "must start with a thinking block" in exc.value.message
