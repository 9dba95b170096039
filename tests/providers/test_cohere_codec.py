"""Golden translations of the Cohere v2 codec (``providers.cohere.chat`` and ``.stream``): OpenAI
Chat bodies to Cohere request bodies, Cohere answers and stream events to the gateway's types.
Shapes follow https://docs.cohere.com/reference/chat and https://docs.cohere.com/docs/tool-use-streaming."""

from __future__ import annotations

import orjson
import pytest

from providers.cohere.chat import build_request, parse_response, url_for
from providers.cohere.stream import StreamParser
from providers.formats import openai_chat
from providers.schema import (
    Finish,
    GenerationRequest,
    ReasoningDelta,
    StreamStart,
    ToolCallDelta,
    UsageReport,
)
from providers.usage import Usage

HELLO = {"model": "public", "messages": [{"role": "user", "content": "hi"}]}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def openai_request(body: dict) -> GenerationRequest:
    return openai_chat.parse_request(body)


def test_request_translation_golden() -> None:
    body = {
        "model": "public",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is here?"},
                    {
                        "type": "image_url",
                        "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"},
                    },
                ],
            },
            {
                "role": "assistant",
                "content": "Checking.",
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        ],
        "tools": [WEATHER_TOOL],
        "tool_choice": "required",
        "temperature": 0.2,
        "top_p": 0.5,
        "max_tokens": 64,
        "stop": ["END"],
        "seed": 7,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "w", "schema": {"type": "object"}},
        },
        "top_k": 40,
        "frequency_penalty": 0.1,
        "stream": True,
    }
    req = openai_request(body)
    req.model = "command-r-plus"
    assert build_request(req) == {
        "model": "command-r-plus",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is here?"},
                    {
                        "type": "image_url",
                        "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"},
                    },
                ],
            },
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                    }
                ],
                "tool_plan": "Checking.",
            },
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        ],
        "stream": True,
        "tools": [WEATHER_TOOL],
        "tool_choice": "REQUIRED",
        "max_tokens": 64,
        "temperature": 0.2,
        "p": 0.5,
        "stop_sequences": ["END"],
        "seed": 7,
        "response_format": {"type": "json_object", "json_schema": {"type": "object"}},
        "k": 40,
        "frequency_penalty": 0.1,
    }


def test_a_named_tool_choice_sends_that_tool_alone_as_required() -> None:
    other = {"type": "function", "function": {"name": "other", "parameters": {"type": "object"}}}
    req = openai_request(
        {
            **HELLO,
            "tools": [other, WEATHER_TOOL],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        }
    )
    out = build_request(req)
    assert [t["function"]["name"] for t in out["tools"]] == ["get_weather"]
    assert out["tool_choice"] == "REQUIRED"
    none = build_request(openai_request({**HELLO, "tools": [other], "tool_choice": "none"}))
    assert none["tool_choice"] == "NONE"
    auto = build_request(openai_request({**HELLO, "tools": [other], "tool_choice": "auto"}))
    assert "tool_choice" not in auto


def test_top_p_is_kept_within_cohere_range() -> None:
    # Cohere's p runs from 0.01 to 0.99; OpenAI's 1.0 (a common default) is its nearest value.
    assert build_request(openai_request({**HELLO, "top_p": 1.0}))["p"] == 0.99
    assert build_request(openai_request({**HELLO, "top_p": 0}))["p"] == 0.01
    assert build_request(openai_request({**HELLO, "top_p": 0.3}))["p"] == 0.3


def test_response_translation_golden() -> None:
    # The shape of the documented example answer, with a tool call and fractional counts.
    answer = {
        "id": "c14c80c3-18eb-4519-9460-6c92edd8cfb4",
        "finish_reason": "TOOL_CALL",
        "message": {
            "role": "assistant",
            "tool_plan": "I will look up the weather.",
            "tool_calls": [
                {
                    "id": "get_weather_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                }
            ],
        },
        "usage": {
            "billed_units": {"input_tokens": 37.0, "output_tokens": 28.0},
            "tokens": {"input_tokens": 913.0, "output_tokens": 83.0},
            "cached_tokens": 5.0,
        },
    }
    resp = parse_response(answer, model="command-r-plus", created=1)
    assert resp.id == answer["id"] and resp.model == "command-r-plus"
    assert resp.text == "" and resp.reasoning == "I will look up the weather."
    assert [(c.id, c.name, c.arguments) for c in resp.tool_calls] == [
        ("get_weather_1", "get_weather", '{"city":"Oslo"}')
    ]
    assert resp.finish_reason == "tool_calls"
    assert resp.usage == Usage(37, 28, cache_read_tokens=5)
    text = parse_response(
        {
            "id": "x",
            "finish_reason": "MAX_TOKENS",
            "message": {
                "role": "assistant",
                "content": [{"type": "thinking", "thinking": "hmm"}, {"type": "text", "text": "Hi"}],
            },
            "usage": {"tokens": {"input_tokens": 3, "output_tokens": 1}},
        },
        model="m",
        created=1,
    )
    assert (text.text, text.reasoning, text.finish_reason, text.usage) == ("Hi", "hmm", "length", Usage(3, 1))


def test_stream_parser_golden() -> None:
    parser = StreamParser(model="m", created=5, clean=str)
    events = [
        {"id": "a1", "type": "message-start", "delta": {"message": {"role": "assistant"}}},
        {"type": "tool-plan-delta", "delta": {"message": {"tool_plan": "I will"}}},
        {
            "type": "tool-call-start",
            "index": 0,
            "delta": {
                "message": {
                    "tool_calls": {"id": "t0", "type": "function", "function": {"name": "f", "arguments": ""}}
                }
            },
        },
        {
            "type": "tool-call-delta",
            "index": 0,
            "delta": {"message": {"tool_calls": {"function": {"arguments": '{"a":'}}}},
        },
        {
            "type": "tool-call-delta",
            "index": 0,
            "delta": {"message": {"tool_calls": {"function": {"arguments": "1}"}}}},
        },
        {"type": "tool-call-end", "index": 0},
        {
            "type": "tool-call-start",
            "index": 1,
            "delta": {
                "message": {
                    "tool_calls": {"id": "t1", "type": "function", "function": {"name": "g", "arguments": ""}}
                }
            },
        },
        {"type": "tool-call-end", "index": 1},
        {
            "type": "message-end",
            "delta": {
                "finish_reason": "TOOL_CALL",
                "usage": {"billed_units": {"input_tokens": 4.0, "output_tokens": 2.0}},
            },
        },
    ]
    out = [e for event in events for e in parser.feed_data(orjson.dumps(event).decode())]
    assert out == [
        StreamStart("a1", "m", 5),
        ReasoningDelta("I will"),
        ToolCallDelta(0, "", "t0", "f"),
        ToolCallDelta(0, '{"a":'),
        ToolCallDelta(0, "1}"),
        ToolCallDelta(1, "", "t1", "g"),
        ToolCallDelta(1, "{}"),  # a call without arguments still gives a JSON object
        Finish("tool_calls"),
        UsageReport(Usage(4, 2)),
    ]
    assert parser.ended and parser.feed_data("[DONE]") == []


@pytest.mark.parametrize(
    ("base", "url"),
    [
        (None, "https://api.cohere.com/v2/chat"),
        ("https://api.cohere.ai/v1", "https://api.cohere.ai/v2/chat"),
        ("https://api.cohere.ai/v2/chat", "https://api.cohere.ai/v2/chat"),
        ("https://proxy.example/cohere/", "https://proxy.example/cohere/v2/chat"),
    ],
)
def test_api_base_spellings(base: str | None, url: str) -> None:
    assert str(url_for(base, "/v2/chat")) == url
