"""Golden tests for the Anthropic Messages codec: fixed inputs, exact outputs, both ways, round trips.

The stream writer's output is also fed to the official ``anthropic`` SDK's own stream
accumulator, so the event sequence is checked against the client that will read it.
"""

from __future__ import annotations

import orjson
import pytest

from providers.formats import anthropic_messages as am
from providers.formats import openai_chat
from providers.formats.errors import FormatError, StreamError
from providers.formats.sse import SSEDecoder, SSEEvent
from providers.schema import (
    Finish,
    GenerationRequest,
    GenerationResponse,
    ImagePart,
    Message,
    ReasoningDelta,
    ResponseFormat,
    StreamStart,
    TextDelta,
    TextPart,
    ThinkingBlock,
    Tool,
    ToolCall,
    ToolCallDelta,
    UsageReport,
)
from providers.usage import Usage

BODY = {
    "model": "claude-x",
    "max_tokens": 256,
    "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather and this?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}},
                {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "hm", "signature": "sig"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Oslo"}},
                {"type": "tool_use", "id": "toolu_2", "name": "look", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "-3C"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "is_error": True,
                    "content": [{"type": "text", "text": "no image"}],
                },
                {"type": "text", "text": "Thanks"},
            ],
        },
    ],
    "tools": [{"name": "weather", "description": "Weather now", "input_schema": {"type": "object"}}],
    "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
    "stop_sequences": ["END"],
    "thinking": {"type": "enabled", "budget_tokens": 1024},
    "metadata": {"user_id": "u1"},
    "top_k": 5,
    "stream": True,
}

REQUEST = GenerationRequest(
    model="claude-x",
    messages=[
        Message("system", [TextPart("Be brief.", {"type": "ephemeral"})]),
        Message(
            "user",
            [
                TextPart("Weather and this?"),
                ImagePart(data="iVBO", media_type="image/png"),
                ImagePart(url="https://x/y.png"),
            ],
        ),
        Message(
            "assistant",
            [TextPart("Checking.")],
            tool_calls=[ToolCall("toolu_1", "weather", '{"city":"Oslo"}'), ToolCall("toolu_2", "look", "{}")],
            thinking=[ThinkingBlock("hm", "sig")],
        ),
        Message("tool", [TextPart("-3C")], tool_call_id="toolu_1"),
        Message("tool", [TextPart("no image")], tool_call_id="toolu_2", is_error=True),
        Message("user", [TextPart("Thanks")]),
    ],
    stream=True,
    max_tokens=256,
    stop=["END"],
    tools=[Tool("weather", "Weather now", {"type": "object"})],
    tool_choice="required",
    parallel_tool_calls=False,
    user="u1",
    reasoning={"type": "enabled", "budget_tokens": 1024},
    extra={"top_k": 5},
    source_format="anthropic_messages",
)


def test_parse_request_golden() -> None:
    assert am.parse_request(BODY) == REQUEST


def test_build_request_golden_and_round_trip() -> None:
    built = am.build_request(REQUEST)
    expected_messages = [
        BODY["messages"][0],
        BODY["messages"][1],  # the history's thinking block goes back first, signature and all
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "-3C"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": "no image", "is_error": True},
                {"type": "text", "text": "Thanks"},
            ],
        },
    ]
    assert built == {
        "model": "claude-x",
        "max_tokens": 256,
        "messages": expected_messages,
        "system": BODY["system"],
        "stream": True,
        "stop_sequences": ["END"],
        "tools": BODY["tools"],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "metadata": {"user_id": "u1"},
        "top_k": 5,
    }
    assert am.parse_request(built) == REQUEST


def test_openai_chat_request_to_anthropic_body() -> None:
    """A chat request with mid-conversation system text, tool turns and no max_tokens."""
    chat = openai_chat.parse_request(
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "S"},
                {"role": "user", "content": "hi"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                    ],
                },
                {"role": "tool", "tool_call_id": "c", "content": "ok"},
                {"role": "user", "content": "and?"},
            ],
            "tool_choice": "auto",
            "parallel_tool_calls": False,
            "logit_bias": {"1": 1},
        }
    )
    assert am.build_request(chat) == {
        "model": "m",
        "max_tokens": am.DEFAULT_MAX_TOKENS,
        "system": "S",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "c", "name": "f", "input": {}}]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "c", "content": "ok"},
                    {"type": "text", "text": "and?"},
                ],
            },
        ],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
    }


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m", "messages": []}, "max_tokens"),
        (
            {"model": "m", "max_tokens": 1, "messages": [{"role": "system", "content": "x"}]},
            "messages.0.role",
        ),
        ({"model": "m", "max_tokens": 1, "messages": "x"}, "messages"),
        (
            {
                "model": "m",
                "max_tokens": 1,
                "messages": [{"role": "user", "content": [{"type": "document"}]}],
            },
            "messages.0.content.0.type",
        ),
        ({"model": "m", "max_tokens": 1, "messages": [], "tool_choice": {"type": "all"}}, "tool_choice.type"),
        ({"model": "m", "max_tokens": 1, "messages": [], "tools": [{"name": "t"}]}, "tools.0.input_schema"),
    ],
)
def test_invalid_requests_name_the_field(body: dict, param: str) -> None:
    with pytest.raises(FormatError) as exc:
        am.parse_request(body)
    assert exc.value.param == param


def test_count_tokens_body_needs_no_max_tokens() -> None:
    req = am.parse_request(
        {"model": "m", "messages": [{"role": "user", "content": "x"}]}, require_max_tokens=False
    )
    assert req.max_tokens is None


RESPONSE = GenerationResponse(
    id="chatcmpl-1",
    model="m",
    created=7,
    text="Let me check.",
    reasoning="think",
    tool_calls=[ToolCall("call_1", "weather", '{"city":"Oslo"}')],
    finish_reason="tool_calls",
    usage=Usage(100, 20, cache_read_tokens=60, cache_write_tokens=30),
)
RESPONSE_BODY = {
    "id": "msg_chatcmpl-1",
    "type": "message",
    "role": "assistant",
    "model": "m",
    "content": [
        {"type": "thinking", "thinking": "think", "signature": ""},
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Oslo"}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 10,
        "output_tokens": 20,
        "cache_creation_input_tokens": 30,
        "cache_read_input_tokens": 60,
    },
}


def test_response_both_ways() -> None:
    assert am.build_response(RESPONSE) == RESPONSE_BODY
    back = am.parse_response(RESPONSE_BODY, created=7)
    thinking = [ThinkingBlock("think", "")]
    assert back == GenerationResponse(**{**_fields(RESPONSE), "id": "msg_chatcmpl-1", "thinking": thinking})


def test_signed_and_redacted_thinking_blocks_round_trip() -> None:
    body = {
        **RESPONSE_BODY,
        "content": [
            {"type": "thinking", "thinking": "first", "signature": "sig-1"},
            {"type": "redacted_thinking", "data": "opaque"},
            {"type": "text", "text": "Done."},
        ],
        "stop_reason": "end_turn",
    }
    resp = am.parse_response(body)
    assert resp.thinking == [ThinkingBlock("first", "sig-1"), ThinkingBlock(redacted="opaque")]
    assert resp.reasoning == "first"
    assert am.build_response(resp)["content"] == body["content"]
    # Sent back in the next turn's history, first in the assistant turn, as the API wants them.
    history = am.parse_request(
        {"model": "m", "max_tokens": 9, "messages": [body, {"role": "user", "content": "go"}]}
    )
    turn = am.build_request(history)["messages"][0]
    assert turn == {"role": "assistant", "content": body["content"]}


def test_stream_signature_and_redacted_blocks_both_ways() -> None:
    parser = am.StreamParser()
    events = [
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "thinking", "thinking": "", "signature": ""},
        },
        {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hm"}},
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "signature_delta", "signature": "sig-9"},
        },
        {"type": "content_block_stop", "index": 0},
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "redacted_thinking", "data": "x1"},
        },
        {"type": "content_block_stop", "index": 1},
    ]
    parsed = [e for ev in events for e in parser.feed(ev)]
    assert parsed == [
        ReasoningDelta("hm"),
        ReasoningDelta("", signature="sig-9"),
        ReasoningDelta("", redacted="x1"),
    ]
    writer = am.StreamWriter()
    out = b"".join(writer.write(e) for e in parsed) + writer.end()
    frames = [orjson.loads(line[6:]) for line in out.split(b"\n") if line.startswith(b"data: ")]
    assert [f["type"] for f in frames][:7] == [
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_stop",
        "message_delta",
    ]
    assert frames[2]["delta"] == {"type": "signature_delta", "signature": "sig-9"}
    assert frames[4]["content_block"] == {"type": "redacted_thinking", "data": "x1"}


def _fields(resp: GenerationResponse) -> dict:
    return {name: getattr(resp, name) for name in resp.__slots__}


@pytest.mark.parametrize(
    ("reason", "stop_reason"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("content_filter", "refusal"),
    ],
)
def test_stop_reasons_both_ways(reason: str, stop_reason: str) -> None:
    body = am.build_response(GenerationResponse("x", "m", 0, text="t", finish_reason=reason))
    assert body["stop_reason"] == stop_reason
    assert am.parse_response(body).finish_reason == reason
    assert am.STOP_REASON_IN["stop_sequence"] == "stop"


def test_invalid_tool_arguments_kept_and_empty_answer_has_a_text_block() -> None:
    body = am.build_response(GenerationResponse("x", "m", 0, tool_calls=[ToolCall("c", "f", "{bad")]))
    assert body["content"] == [
        {"type": "tool_use", "id": "c", "name": "f", "input": {"_raw_arguments": "{bad"}}
    ]
    assert am.build_response(GenerationResponse("x", "m", 0))["content"] == [{"type": "text", "text": ""}]


# What an OpenAI upstream's stream becomes (thinking, text, two tool calls), and the exact
# Anthropic event sequence written for it.
EVENTS = [
    StreamStart("chatcmpl-9", "m", 5),
    ReasoningDelta("hm"),
    TextDelta("Hi"),
    TextDelta(" there"),
    ToolCallDelta(0, "", "call_a", "weather"),
    ToolCallDelta(0, '{"city":'),
    ToolCallDelta(0, '"Oslo"}'),
    ToolCallDelta(1, "{}", "call_b", "look"),
    Finish("tool_calls"),
    UsageReport(Usage(11, 22)),
]
WIRE = [
    ("message_start", {"type": "message_start", "message": {
        "id": "msg_chatcmpl-9", "type": "message", "role": "assistant", "model": "m", "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 11, "output_tokens": 0}}}),
    ("ping", {"type": "ping"}),
    ("content_block_start", {"type": "content_block_start", "index": 0,
                             "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0,
                             "delta": {"type": "thinking_delta", "thinking": "hm"}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    ("content_block_start", {"type": "content_block_start", "index": 1,
                             "content_block": {"type": "text", "text": ""}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 1,
                             "delta": {"type": "text_delta", "text": "Hi"}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 1,
                             "delta": {"type": "text_delta", "text": " there"}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 1}),
    ("content_block_start", {"type": "content_block_start", "index": 2, "content_block": {
        "type": "tool_use", "id": "call_a", "name": "weather", "input": {}}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 2,
                             "delta": {"type": "input_json_delta", "partial_json": '{"city":'}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 2,
                             "delta": {"type": "input_json_delta", "partial_json": '"Oslo"}'}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 2}),
    ("content_block_start", {"type": "content_block_start", "index": 3, "content_block": {
        "type": "tool_use", "id": "call_b", "name": "look", "input": {}}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 3,
                             "delta": {"type": "input_json_delta", "partial_json": "{}"}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 3}),
    ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                       "usage": {"input_tokens": 11, "output_tokens": 22, "cache_creation_input_tokens": 0,
                                 "cache_read_input_tokens": 0}}),
    ("message_stop", {"type": "message_stop"}),
]  # fmt: skip


def _write(events: list) -> bytes:
    writer = am.StreamWriter(input_tokens=11)
    return b"".join(writer.write(e) for e in events) + writer.end()


def test_stream_writer_golden() -> None:
    decoded = SSEDecoder().feed(_write(EVENTS))
    assert decoded == [SSEEvent(orjson.dumps(obj).decode(), name) for name, obj in WIRE]


def test_openai_upstream_stream_to_anthropic_events_end_to_end() -> None:
    """chat.completion.chunk bytes -> StreamEvents -> Anthropic events: tool calls whole and in order."""
    upstream = openai_chat.StreamWriter(include_usage=True)
    chunks = b"".join(upstream.write(e) for e in EVENTS) + upstream.end()
    parser, writer = openai_chat.StreamParser(), am.StreamWriter(input_tokens=11)
    out = b""
    for event in SSEDecoder().feed(chunks):
        for item in parser.feed_data(event.data):
            out += writer.write(item)
    out += writer.end()
    assert out == _write(EVENTS)


async def test_the_anthropic_sdk_accumulates_the_written_stream() -> None:
    from anthropic.lib.streaming._messages import accumulate_event
    from anthropic.types import RawMessageStreamEvent

    snapshot = None
    json_bufs: dict[int, bytes] = {}
    for event in SSEDecoder().feed(_write(EVENTS)):
        parsed = _construct(RawMessageStreamEvent, orjson.loads(event.data))
        snapshot = accumulate_event(event=parsed, current_snapshot=snapshot, json_bufs=json_bufs)
    assert snapshot is not None
    assert snapshot.stop_reason == "tool_use"
    assert [b.type for b in snapshot.content] == ["thinking", "text", "tool_use", "tool_use"]
    assert snapshot.content[1].text == "Hi there"
    assert snapshot.content[2].input == {"city": "Oslo"}
    assert (snapshot.content[3].id, snapshot.content[3].name, snapshot.content[3].input) == (
        "call_b",
        "look",
        {},
    )
    assert (snapshot.usage.input_tokens, snapshot.usage.output_tokens) == (11, 22)


def _construct(type_: object, value: object) -> object:
    from anthropic._models import construct_type

    return construct_type(type_=type_, value=value)


def test_stream_parser_round_trip_from_anthropic_events() -> None:
    """An Anthropic upstream's events (as the writer wrote them) parse back to the same events."""
    parser = am.StreamParser(created=5)
    events = [e for ev in SSEDecoder().feed(_write(EVENTS)) for e in parser.feed_data(ev.data)]
    expected = list(EVENTS)
    expected[0] = StreamStart("msg_chatcmpl-9", "m", 5)
    # a tool_use block opens with id and name; its input comes as a fragment after
    expected[7:8] = [ToolCallDelta(1, "", "call_b", "look"), ToolCallDelta(1, "{}")]
    assert events == expected


def test_stream_parser_tool_without_input_fragments_and_errors() -> None:
    parser = am.StreamParser()
    start = {"type": "content_block_start", "index": 0,
             "content_block": {"type": "tool_use", "id": "t", "name": "f", "input": {}}}  # fmt: skip
    assert parser.feed(start) == [ToolCallDelta(0, "", "t", "f")]
    assert parser.feed({"type": "content_block_stop", "index": 0}) == [ToolCallDelta(0, "{}")]
    assert parser.feed({"type": "ping"}) == []
    with pytest.raises(StreamError) as exc:
        parser.feed({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    assert exc.value.type == "overloaded_error"


def test_error_event() -> None:
    assert am.error_event("api_error", "boom") == (
        b'event: error\ndata: {"type":"error","error":{"type":"api_error","message":"boom"}}\n\n'
    )


# ---- upstream direction: JSON output, reasoning effort ---------------------------------------

JSON_SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}}


def _json_request(**kw: object) -> GenerationRequest:
    fields: dict = {"response_format": ResponseFormat("json_schema", "count", JSON_SCHEMA), **kw}
    return GenerationRequest(model="m", messages=[Message("user", [TextPart("count")])], **fields)


def test_json_output_is_a_forced_tool() -> None:
    assert am.build_request(_json_request()) == {
        "model": "m",
        "max_tokens": am.DEFAULT_MAX_TOKENS,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "count"}]}],
        "tools": [
            {
                "name": "json_tool_call",
                "description": "Respond with a JSON object that follows this schema.",
                "input_schema": JSON_SCHEMA,
            }
        ],
        "tool_choice": {"type": "tool", "name": "json_tool_call"},
    }
    plain = am.build_request(_json_request(response_format=ResponseFormat("json_object")))
    assert plain["tools"][0]["input_schema"] == {"type": "object"}


def test_json_tool_is_offered_not_forced_beside_caller_tools_or_thinking() -> None:
    with_tools = am.build_request(_json_request(tools=[Tool("f")], tool_choice="auto"))
    assert [t["name"] for t in with_tools["tools"]] == ["f", "json_tool_call"]
    assert with_tools["tool_choice"] == {"type": "auto"}
    thinking = am.build_request(_json_request(reasoning={"type": "enabled", "budget_tokens": 1024}))
    assert "tool_choice" not in thinking
    assert thinking["max_tokens"] == am.DEFAULT_MAX_TOKENS + 1024


def test_json_tool_answer_reads_back_as_text() -> None:
    body = {
        "id": "msg_1",
        "model": "m",
        "content": [{"type": "tool_use", "id": "t", "name": "json_tool_call", "input": {"n": 3}}],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 1, "output_tokens": 2},
    }
    answer = am.parse_response(body, json_mode=True)
    assert (answer.text, answer.tool_calls, answer.finish_reason) == ('{"n":3}', [], "stop")
    # Without json_mode a tool of that name is an ordinary call.
    assert am.parse_response(body).tool_calls == [ToolCall("t", "json_tool_call", '{"n":3}')]


def test_json_tool_streams_as_text_and_other_calls_keep_their_numbers() -> None:
    parser = am.StreamParser(json_mode=True)

    def start(i: int, name: str) -> dict:
        block = {"type": "tool_use", "id": f"t{i}", "name": name, "input": {}}
        return {"type": "content_block_start", "index": i, "content_block": block}

    def piece(i: int, text: str) -> dict:
        delta = {"type": "input_json_delta", "partial_json": text}
        return {"type": "content_block_delta", "index": i, "delta": delta}

    def stop(i: int) -> dict:
        return {"type": "content_block_stop", "index": i}

    fed = [
        start(0, "json_tool_call"), piece(0, '{"n":'), piece(0, "3}"), stop(0),
        start(1, "f"), stop(1),
    ]  # fmt: skip
    out = [e for event in fed for e in parser.feed(event)]
    assert out == [
        TextDelta('{"n":'),
        TextDelta("3}"),
        ToolCallDelta(0, "", "t1", "f"),
        ToolCallDelta(0, "{}"),
    ]
    finish = parser.feed({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {}})
    assert finish == [Finish("tool_calls")]  # a real call was made too
    only_json = am.StreamParser(json_mode=True)
    only_json.feed(start(0, "json_tool_call"))
    assert only_json.feed(stop(0)) == [TextDelta("{}")]
    assert only_json.feed({"type": "message_delta", "delta": {"stop_reason": "tool_use"}}) == [Finish("stop")]


@pytest.mark.parametrize(
    ("effort", "budget"), [("minimal", 1024), ("low", 1024), ("medium", 2048), ("high", 4096), ("none", None)]
)
def test_reasoning_effort_becomes_a_thinking_budget(effort: str, budget: int | None) -> None:
    body = am.build_request(
        GenerationRequest("m", [Message("user", [TextPart("x")])], reasoning={"effort": effort})
    )
    if budget is None:
        assert "thinking" not in body and body["max_tokens"] == am.DEFAULT_MAX_TOKENS
    else:
        assert body["thinking"] == {"type": "enabled", "budget_tokens": budget}
        assert body["max_tokens"] == am.DEFAULT_MAX_TOKENS + budget


def test_unknown_reasoning_effort_names_the_field() -> None:
    with pytest.raises(FormatError) as exc:
        am.build_request(
            GenerationRequest("m", [Message("user", [TextPart("x")])], reasoning={"effort": "max"})
        )
    assert exc.value.param == "reasoning_effort"


def test_input_fragment_for_a_block_that_is_no_tool_is_a_format_error() -> None:
    delta = {"type": "input_json_delta", "partial_json": "{}"}
    with pytest.raises(FormatError):
        am.StreamParser().feed({"type": "content_block_delta", "index": 4, "delta": delta})
