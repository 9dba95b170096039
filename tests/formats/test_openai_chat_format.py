"""Golden tests for the OpenAI Chat codec: fixed inputs, exact outputs, both ways, and round trips."""

from __future__ import annotations

import orjson
import pytest

from providers.formats import openai_chat
from providers.formats.errors import FormatError
from providers.formats.sse import SSEDecoder
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
    "model": "gpt-x",
    "messages": [
        {"role": "developer", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO", "detail": "low"}},
                {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "look", "arguments": '{"q":"x"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "a cat"},
    ],
    "tools": [
        {
            "type": "function",
            "function": {"name": "look", "description": "Look up", "parameters": {"type": "object"}},
        }
    ],
    "tool_choice": {"type": "function", "function": {"name": "look"}},
    "response_format": {
        "type": "json_schema",
        "json_schema": {"name": "out", "schema": {"type": "object"}, "strict": True},
    },
    "stop": "END",
    "max_completion_tokens": 50,
    "max_tokens": 10,
    "temperature": 0.5,
    "stream": True,
    "stream_options": {"include_usage": True},
    "logit_bias": {"1": 2},
}

REQUEST = GenerationRequest(
    model="gpt-x",
    messages=[
        Message("system", [TextPart("Be brief.")]),
        Message(
            "user",
            [
                TextPart("What is this?"),
                ImagePart(data="iVBO", media_type="image/png", detail="low"),
                ImagePart(url="https://x/y.png"),
            ],
        ),
        Message("assistant", [], tool_calls=[ToolCall("call_1", "look", '{"q":"x"}')]),
        Message("tool", [TextPart("a cat")], tool_call_id="call_1"),
    ],
    stream=True,
    max_tokens=50,
    temperature=0.5,
    stop=["END"],
    tools=[Tool("look", "Look up", {"type": "object"})],
    tool_choice="look",
    response_format=ResponseFormat("json_schema", name="out", schema={"type": "object"}, strict=True),
    extra={"stream_options": {"include_usage": True}, "logit_bias": {"1": 2}},
    source_format="openai_chat",
)


def test_parse_request_golden() -> None:
    assert openai_chat.parse_request(BODY) == REQUEST


def test_build_request_golden() -> None:
    assert openai_chat.build_request(REQUEST) == {
        "model": "gpt-x",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {
                        "type": "image_url",
                        "image_url": {"url": "data:image/png;base64,iVBO", "detail": "low"},
                    },
                    {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
                ],
            },
            BODY["messages"][2],
            BODY["messages"][3],
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 50,
        "temperature": 0.5,
        "stop": ["END"],
        "tools": BODY["tools"],
        "tool_choice": {"type": "function", "function": {"name": "look"}},
        "response_format": BODY["response_format"],
        "logit_bias": {"1": 2},
    }


def test_request_round_trip_and_foreign_extra_not_sent() -> None:
    assert openai_chat.parse_request(openai_chat.build_request(REQUEST)) == REQUEST
    foreign = GenerationRequest("m", [Message("user", [TextPart("hi")])], extra={"top_k": 3})
    foreign.source_format = "anthropic_messages"
    assert openai_chat.build_request(foreign) == {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
    }


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "model"),
        ({"model": "m", "messages": []}, "messages"),
        ({"model": "m", "messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
        (
            {"model": "m", "messages": [{"role": "user", "content": [{"type": "audio"}]}]},
            "messages.0.content.0.type",
        ),
        ({"model": "m", "messages": [{"role": "tool", "content": "x"}]}, "messages.0.tool_call_id"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": "5"}, "max_tokens"),
        (
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "x"}]},
            "tools.0.type",
        ),
    ],
)
def test_invalid_requests_name_the_field(body: dict, param: str) -> None:
    with pytest.raises(FormatError) as exc:
        openai_chat.parse_request(body)
    assert exc.value.param == param


RESPONSE = GenerationResponse(
    id="chatcmpl-1",
    model="gpt-x",
    created=1700000000,
    text="",
    reasoning="think",
    tool_calls=[ToolCall("call_9", "look", '{"q": 1}')],
    finish_reason="tool_calls",
    usage=Usage(12, 7, cache_read_tokens=4),
)
RESPONSE_BODY = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "gpt-x",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": None,
                "reasoning_content": "think",
                "tool_calls": [
                    {
                        "id": "call_9",
                        "type": "function",
                        "function": {"name": "look", "arguments": '{"q": 1}'},
                    }
                ],
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        }
    ],
    "usage": {
        "prompt_tokens": 12,
        "completion_tokens": 7,
        "total_tokens": 19,
        "prompt_tokens_details": {"cached_tokens": 4},
    },
}


def test_response_both_ways() -> None:
    assert openai_chat.build_response(RESPONSE) == RESPONSE_BODY
    assert openai_chat.parse_response(RESPONSE_BODY) == RESPONSE


UPSTREAM_CHUNKS = [
    {"id": "c1", "object": "chat.completion.chunk", "created": 5, "model": "gpt-x",
     "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
    {"id": "c1", "created": 5, "model": "gpt-x",
     "choices": [{"index": 0, "delta": {"reasoning_content": "hm"}, "finish_reason": None}]},
    {"id": "c1", "created": 5, "model": "gpt-x",
     "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}]},
    {"id": "c1", "created": 5, "model": "gpt-x", "choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 3, "id": "call_a", "type": "function", "function": {"name": "f", "arguments": ""}}]}}]},
    {"id": "c1", "created": 5, "model": "gpt-x", "choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 3, "function": {"arguments": '{"a":'}}]}}]},
    {"id": "c1", "created": 5, "model": "gpt-x", "choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 3, "function": {"arguments": "1}"}}]}}]},
    {"id": "c1", "created": 5, "model": "gpt-x", "choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 4, "id": "call_b", "type": "function", "function": {"name": "g", "arguments": "{}"}}]}}]},
    {"id": "c1", "created": 5, "model": "gpt-x",
     "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    {"id": "c1", "created": 5, "model": "gpt-x", "choices": [],
     "usage": {"prompt_tokens": 3, "completion_tokens": 9, "total_tokens": 12}},
]  # fmt: skip

EVENTS = [
    StreamStart("c1", "gpt-x", 5),
    ReasoningDelta("hm"),
    TextDelta("Hi"),
    ToolCallDelta(0, "", "call_a", "f"),
    ToolCallDelta(0, '{"a":'),
    ToolCallDelta(0, "1}"),
    ToolCallDelta(1, "{}", "call_b", "g"),
    Finish("tool_calls"),
    UsageReport(Usage(3, 9)),
]


def test_stream_parser_golden() -> None:
    parser = openai_chat.StreamParser()
    events = []
    for chunk in UPSTREAM_CHUNKS:
        events += parser.feed_data(orjson.dumps(chunk))
    assert events + parser.feed_data("[DONE]") == EVENTS


def test_stream_parser_rejects_interleaved_calls_and_raises_upstream_errors() -> None:
    parser = openai_chat.StreamParser()
    for chunk in UPSTREAM_CHUNKS[3:7]:
        parser.feed(chunk)
    with pytest.raises(FormatError):
        parser.feed(UPSTREAM_CHUNKS[4])
    with pytest.raises(openai_chat.StreamError) as exc:
        openai_chat.StreamParser().feed({"error": {"message": "boom", "type": "server_error", "code": None}})
    assert exc.value.message == "boom"
    assert exc.value.type == "server_error"


def test_stream_writer_golden_and_round_trip() -> None:
    writer = openai_chat.StreamWriter(include_usage=True)
    wire = b"".join(writer.write(e) for e in EVENTS) + writer.end()
    head = (
        b'{"id":"c1","object":"chat.completion.chunk","created":5,"model":"gpt-x",'
        b'"choices":[{"index":0,"delta":'
    )
    assert wire.split(b"\n\n")[:4] == [
        b"data: " + head + b'{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}',
        b"data: " + head + b'{"reasoning_content":"hm"},"logprobs":null,"finish_reason":null}]}',
        b"data: " + head + b'{"content":"Hi"},"logprobs":null,"finish_reason":null}]}',
        b"data: " + head + b'{"tool_calls":[{"index":0,"id":"call_a","type":"function",'
        b'"function":{"name":"f","arguments":""}}]},"logprobs":null,"finish_reason":null}]}',
    ]
    assert wire.endswith(
        b'"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":9,"total_tokens":12}}\n\n'
        b"data: [DONE]\n\n"
    )
    # What the writer wrote, parsed back, is the same event list.
    decoder, parser = SSEDecoder(), openai_chat.StreamParser()
    assert [e for ev in decoder.feed(wire) for e in parser.feed_data(ev.data)] == EVENTS
    # Without include_usage no usage chunk is written.
    quiet = openai_chat.StreamWriter(include_usage=False)
    assert quiet.write(UsageReport(Usage(1, 1))) == b""


def test_thinking_blocks_as_litellm_carries_them() -> None:
    blocks = [
        {"type": "thinking", "thinking": "hm", "signature": "sig-1"},
        {"type": "redacted_thinking", "data": "opaque"},
    ]
    resp = GenerationResponse(
        "c1",
        "m",
        1,
        text="ok",
        reasoning="hm",
        thinking=[ThinkingBlock("hm", "sig-1"), ThinkingBlock(redacted="opaque")],
    )
    message = openai_chat.build_response(resp)["choices"][0]["message"]
    assert message["reasoning_content"] == "hm" and message["thinking_blocks"] == blocks
    assert openai_chat.parse_response(openai_chat.build_response(resp)).thinking == resp.thinking
    # The client sends them back on its assistant message: read into the history.
    body = {"model": "m", "messages": [{"role": "user", "content": "q"}, {**message, "content": "ok"}]}
    assert openai_chat.parse_request(body).messages[1].thinking == resp.thinking
    with pytest.raises(FormatError) as exc:
        openai_chat.parse_request(
            {**body, "messages": [{"role": "assistant", "content": "x", "thinking_blocks": [{"type": "x"}]}]}
        )
    assert exc.value.param == "messages.0.thinking_blocks.0.type"


def test_stream_carries_a_block_s_signature_in_a_chunk_of_its_own() -> None:
    writer = openai_chat.StreamWriter(include_usage=False, id="c1", model="m", created=1)
    events = [ReasoningDelta("hm"), ReasoningDelta("", signature="sig-1"), ReasoningDelta("", redacted="x")]
    deltas = [orjson.loads(writer.write(e)[6:])["choices"][0]["delta"] for e in events]
    assert deltas == [
        {"reasoning_content": "hm"},
        {"thinking_blocks": [{"type": "thinking", "thinking": "", "signature": "sig-1"}]},
        {"thinking_blocks": [{"type": "redacted_thinking", "data": "x"}]},
    ]
    parser = openai_chat.StreamParser()
    parsed = [e for d in deltas for e in parser.feed({"id": "c1", "choices": [{"delta": d}]})]
    assert parsed[1:] == events
