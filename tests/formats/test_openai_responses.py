"""Golden tests for the OpenAI Responses codec: fixed inputs, exact outputs, both ways.

Every response object and stream event written is also validated against the official ``openai``
SDK's pydantic models (generated from OpenAI's spec), so a missing or misnamed field fails here.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from providers.formats import openai_responses as rsp
from providers.formats.errors import FormatError, StreamError
from providers.formats.sse import SSEDecoder
from providers.schema import (
    Finish,
    GenerationResponse,
    ImagePart,
    Message,
    ReasoningDelta,
    ResponseFormat,
    StreamStart,
    TextDelta,
    TextPart,
    Tool,
    ToolCall,
    ToolCallDelta,
    UsageReport,
)
from providers.usage import Usage

EVENTS = TypeAdapter(ResponseStreamEvent)

BODY: dict[str, Any] = {
    "model": "gpt-x",
    "instructions": "Be brief.",
    "input": [
        {"role": "developer", "content": "Use tools."},
        {
            "type": "message",
            "role": "user",
            "content": [
                {"type": "input_text", "text": "What is this?"},
                {"type": "input_image", "image_url": "data:image/png;base64,iVBO", "detail": "low"},
                {"type": "input_image", "image_url": "https://x/y.png"},
            ],
        },
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Let me look.", "annotations": []}],
        },
        {"type": "function_call", "call_id": "call_1", "name": "look", "arguments": '{"q":"x"}'},
        {"type": "function_call", "call_id": "call_2", "name": "look", "arguments": '{"q":"y"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "a cat"},
        {
            "type": "function_call_output",
            "call_id": "call_2",
            "output": [{"type": "input_text", "text": "a dog"}],
        },
    ],
    "tools": [
        {"type": "function", "name": "look", "description": "Look up", "parameters": {"type": "object"}}
    ],
    "tool_choice": {"type": "function", "name": "look"},
    "text": {"format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}, "strict": True}},
    "max_output_tokens": 50,
    "temperature": 0.5,
    "top_p": 0.9,
    "parallel_tool_calls": False,
    "reasoning": {"effort": "low"},
    "user": "u1",
    "store": False,
    "metadata": {"a": "b"},
    "service_tier": "flex",
}

MESSAGES = [
    Message("system", [TextPart("Be brief.")]),
    Message("system", [TextPart("Use tools.")]),
    Message(
        "user",
        [
            TextPart("What is this?"),
            ImagePart(data="iVBO", media_type="image/png", detail="low"),
            ImagePart(url="https://x/y.png"),
        ],
    ),
    Message(
        "assistant",
        [TextPart("Let me look.")],
        tool_calls=[ToolCall("call_1", "look", '{"q":"x"}'), ToolCall("call_2", "look", '{"q":"y"}')],
    ),
    Message("tool", [TextPart("a cat")], tool_call_id="call_1"),
    Message("tool", [TextPart("a dog")], tool_call_id="call_2"),
]


def test_parse_request_every_field() -> None:
    req = rsp.parse_request(BODY)
    assert req.model == "gpt-x"
    assert req.messages == MESSAGES
    assert req.tools == [Tool("look", "Look up", {"type": "object"})]
    assert req.tool_choice == "look"
    assert req.response_format == ResponseFormat("json_schema", "out", {"type": "object"}, True)
    assert (req.max_tokens, req.temperature, req.top_p) == (50, 0.5, 0.9)
    assert req.parallel_tool_calls is False
    assert req.reasoning == {"effort": "low"}
    assert req.user == "u1"
    assert req.stream is False
    # store/metadata/previous_response_id are the door's; only unknown fields go to extra.
    assert req.extra == {"service_tier": "flex"}
    assert req.source_format == "openai_responses"


def test_string_input_and_history_order() -> None:
    history = [Message("user", [TextPart("hi")]), Message("assistant", [TextPart("hello")])]
    req = rsp.parse_request({"model": "m", "input": "again", "instructions": "sys"}, history)
    assert [(m.role, m.text()) for m in req.messages] == [
        ("system", "sys"),
        ("user", "hi"),
        ("assistant", "hello"),
        ("user", "again"),
    ]
    assert rsp.parse_input_items({"input": "again"}) == [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "again"}]}
    ]


def test_listed_input_items_get_ids_and_parts() -> None:
    items = [
        {"role": "user", "content": "hi"},
        {"type": "message", "role": "assistant", "content": "yo", "id": "msg_keep"},
        {"type": "function_call_output", "call_id": "c", "output": "x"},
    ]
    assert rsp.listed_input_items(items, "resp_r") == [
        {
            "id": "msg_r_in0",
            "role": "user",
            "content": [{"type": "input_text", "text": "hi"}],
            "type": "message",
            "status": "completed",
        },
        {
            "id": "msg_keep",
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "yo"}],
            "status": "completed",
        },
        {
            "id": "fco_r_in2",
            "type": "function_call_output",
            "call_id": "c",
            "output": "x",
            "status": "completed",
        },
    ]


def test_function_call_after_user_turn_opens_an_assistant_turn() -> None:
    msgs = rsp.items_to_messages(
        [
            {"role": "user", "content": "x"},
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
        ],
        "input",
    )
    assert msgs == [
        Message("user", [TextPart("x")]),
        Message("assistant", tool_calls=[ToolCall("c", "f", "{}")]),
    ]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "x"}, "model"),
        ({"model": "m"}, "input"),
        ({"model": "m", "input": 3}, "input"),
        ({"model": "m", "input": [1]}, "input.0"),
        ({"model": "m", "input": [{"role": "robot", "content": "x"}]}, "input.0.role"),
        ({"model": "m", "input": [{"type": "item_reference", "id": "x"}]}, "input.0.type"),
        (
            {"model": "m", "input": [{"role": "user", "content": [{"type": "input_file"}]}]},
            "input.0.content.0.type",
        ),
        (
            {"model": "m", "input": [{"role": "user", "content": [{"type": "input_image"}]}]},
            "input.0.content.0.image_url",
        ),
        (
            {"model": "m", "input": [{"type": "function_call", "name": "f", "arguments": "{}"}]},
            "input.0.call_id",
        ),
        ({"model": "m", "input": [{"type": "function_call_output", "output": "x"}]}, "input.0.call_id"),
        ({"model": "m", "input": "x", "tools": [{"type": "web_search"}]}, "tools.0.type"),
        ({"model": "m", "input": "x", "tools": [{"type": "function"}]}, "tools.0.name"),
        ({"model": "m", "input": "x", "tool_choice": {"type": "file_search"}}, "tool_choice"),
        ({"model": "m", "input": "x", "text": {"format": {"type": "xml"}}}, "text.format.type"),
        ({"model": "m", "input": "x", "text": {"format": {"type": "json_schema"}}}, "text.format.name"),
        ({"model": "m", "input": "x", "max_output_tokens": "5"}, "max_output_tokens"),
        ({"model": "m", "input": "x", "reasoning": {"effort": 1}}, "reasoning.effort"),
        ({"model": "m", "input": "x", "stream": "yes"}, "stream"),
    ],
)
def test_bad_requests_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(FormatError) as err:
        rsp.parse_request(body)
    assert err.value.param == param


def test_echo_defaults() -> None:
    assert rsp.echo({"model": "m", "input": "x"}) == {
        "instructions": None,
        "max_output_tokens": None,
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": True,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "user": None,
        "metadata": {},
    }


ECHO = rsp.echo({"model": "gpt-x", "input": "x", "previous_response_id": "resp_prev"})


def test_build_response_text_golden() -> None:
    resp = GenerationResponse(
        id="chatcmpl-1",
        model="gpt-x-2025",
        created=5,
        text="Paris.",
        finish_reason="stop",
        usage=Usage(10, 2, cache_read_tokens=4),
    )
    body = rsp.build_response(resp, response_id="resp_abc", created_at=100, echoed=ECHO)
    assert body == {
        "id": "resp_abc",
        "object": "response",
        "created_at": 100,
        "status": "completed",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "max_output_tokens": None,
        "model": "gpt-x-2025",
        "output": [
            {
                "id": "msg_abc",
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Paris.", "annotations": [], "logprobs": []}],
            }
        ],
        "parallel_tool_calls": True,
        "previous_response_id": "resp_prev",
        "reasoning": {"effort": None, "summary": None},
        "store": True,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": {
            "input_tokens": 10,
            "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 0},
            "output_tokens": 2,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 12,
        },
        "user": None,
        "metadata": {},
    }
    sdk = Response.model_validate(body)
    assert sdk.output_text == "Paris."


def test_build_response_tool_calls_reasoning_and_length() -> None:
    resp = GenerationResponse(
        id="x",
        model="m",
        created=0,
        reasoning="hmm",
        tool_calls=[ToolCall("call_9", "look", '{"q":1}')],
        finish_reason="tool_calls",
    )
    body = rsp.build_response(resp, response_id="resp_z", created_at=1, echoed=ECHO)
    assert body["output"] == [
        {
            "id": "rs_z",
            "type": "reasoning",
            "status": "completed",
            "summary": [],
            "content": [{"type": "reasoning_text", "text": "hmm"}],
        },
        {
            "id": "fc_z_0",
            "type": "function_call",
            "status": "completed",
            "arguments": '{"q":1}',
            "call_id": "call_9",
            "name": "look",
        },
    ]
    assert body["usage"] is None
    Response.model_validate(body)
    cut = rsp.build_response(
        GenerationResponse(id="x", model="m", created=0, text="Par", finish_reason="length"),
        response_id="resp_z",
        created_at=1,
        echoed=ECHO,
    )
    assert cut["status"] == "incomplete"
    assert cut["incomplete_details"] == {"reason": "max_output_tokens"}
    assert cut["output"][0]["status"] == "incomplete"


def _decode(raw: bytes) -> list[dict[str, Any]]:
    events = SSEDecoder().feed(raw)
    out = []
    for ev in events:
        obj = orjson.loads(ev.data)
        assert ev.event == obj["type"]  # the SSE event name is the type, as OpenAI sends it
        EVENTS.validate_python(obj)
        out.append(obj)
    return out


def _stream(events: list[Any]) -> tuple[list[dict[str, Any]], rsp.StreamWriter]:
    writer = rsp.StreamWriter(response_id="resp_s", created_at=7, model="asked", echoed=ECHO)
    raw = b"".join(writer.write(e) for e in events) + writer.end()
    return _decode(raw), writer


def test_stream_text_golden() -> None:
    events, writer = _stream(
        [
            StreamStart("chatcmpl-1", "gpt-x-2025", 5),
            TextDelta("Hel"),
            TextDelta("lo"),
            Finish("stop"),
            UsageReport(Usage(3, 2)),
        ]
    )
    slim = [{k: v for k, v in e.items() if k != "response"} for e in events]
    assert slim == [
        {"type": "response.created", "sequence_number": 0},
        {"type": "response.in_progress", "sequence_number": 1},
        {
            "type": "response.output_item.added",
            "sequence_number": 2,
            "output_index": 0,
            "item": {
                "id": "msg_s",
                "type": "message",
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            },
        },
        {
            "type": "response.content_part.added",
            "sequence_number": 3,
            "item_id": "msg_s",
            "output_index": 0,
            "content_index": 0,
            "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []},
        },
        {
            "type": "response.output_text.delta",
            "sequence_number": 4,
            "item_id": "msg_s",
            "output_index": 0,
            "content_index": 0,
            "delta": "Hel",
            "logprobs": [],
        },
        {
            "type": "response.output_text.delta",
            "sequence_number": 5,
            "item_id": "msg_s",
            "output_index": 0,
            "content_index": 0,
            "delta": "lo",
            "logprobs": [],
        },
        {
            "type": "response.output_text.done",
            "sequence_number": 6,
            "item_id": "msg_s",
            "output_index": 0,
            "content_index": 0,
            "text": "Hello",
            "logprobs": [],
        },
        {
            "type": "response.content_part.done",
            "sequence_number": 7,
            "item_id": "msg_s",
            "output_index": 0,
            "content_index": 0,
            "part": {"type": "output_text", "text": "Hello", "annotations": [], "logprobs": []},
        },
        {
            "type": "response.output_item.done",
            "sequence_number": 8,
            "output_index": 0,
            "item": {
                "id": "msg_s",
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Hello", "annotations": [], "logprobs": []}],
            },
        },
        {"type": "response.completed", "sequence_number": 9},
    ]
    created = events[0]["response"]
    assert (created["id"], created["status"], created["output"], created["usage"]) == (
        "resp_s",
        "in_progress",
        [],
        None,
    )
    assert created["model"] == "gpt-x-2025"
    final = events[-1]["response"]
    assert final["status"] == "completed"
    assert final["output"] == [events[8]["item"]]
    assert final["usage"]["total_tokens"] == 5
    assert writer.response == final
    assert writer.output == final["output"]


def test_stream_reasoning_text_and_two_tool_calls_golden() -> None:
    events, writer = _stream(
        [
            StreamStart("c", "m", 0),
            ReasoningDelta("think"),
            TextDelta("ok"),
            ToolCallDelta(0, "", "call_a", "look"),
            ToolCallDelta(0, '{"q":'),
            ToolCallDelta(0, '"x"}'),
            ToolCallDelta(1, '{"q":"y"}', "call_b", "look"),
            Finish("tool_calls"),
        ]
    )
    assert [(e["type"], e.get("output_index")) for e in events] == [
        ("response.created", None),
        ("response.in_progress", None),
        ("response.output_item.added", 0),
        ("response.content_part.added", 0),
        ("response.reasoning_text.delta", 0),
        ("response.reasoning_text.done", 0),
        ("response.content_part.done", 0),
        ("response.output_item.done", 0),
        ("response.output_item.added", 1),
        ("response.content_part.added", 1),
        ("response.output_text.delta", 1),
        ("response.output_text.done", 1),
        ("response.content_part.done", 1),
        ("response.output_item.done", 1),
        ("response.output_item.added", 2),
        ("response.function_call_arguments.delta", 2),
        ("response.function_call_arguments.delta", 2),
        ("response.function_call_arguments.done", 2),
        ("response.output_item.done", 2),
        ("response.output_item.added", 3),
        ("response.function_call_arguments.delta", 3),
        ("response.function_call_arguments.done", 3),
        ("response.output_item.done", 3),
        ("response.completed", None),
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[14]["item"] == {
        "id": "fc_s_0",
        "type": "function_call",
        "status": "in_progress",
        "arguments": "",
        "call_id": "call_a",
        "name": "look",
    }
    assert events[17] == {
        "type": "response.function_call_arguments.done",
        "sequence_number": 17,
        "item_id": "fc_s_0",
        "output_index": 2,
        "arguments": '{"q":"x"}',
    }
    assert events[20]["delta"] == '{"q":"y"}'
    final = events[-1]["response"]
    assert [(i["type"], i["id"]) for i in final["output"]] == [
        ("reasoning", "rs_s"),
        ("message", "msg_s"),
        ("function_call", "fc_s_0"),
        ("function_call", "fc_s_1"),
    ]
    assert final["output"][3]["arguments"] == '{"q":"y"}'
    assert writer.output == final["output"]


def test_stream_cut_at_length_ends_incomplete() -> None:
    events, _ = _stream(
        [StreamStart("c", "m", 0), TextDelta("Par"), Finish("length"), UsageReport(Usage(1, 1))]
    )
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert events[-2]["item"]["status"] == "incomplete"


# ---- upstream side ---------------------------------------------------------------------------


def test_build_request_golden() -> None:
    req = rsp.parse_request(BODY)
    req.stream = True
    assert rsp.build_request(req) == {
        "model": "gpt-x",
        "input": [
            {
                "type": "message",
                "role": "developer",
                "content": [{"type": "input_text", "text": "Be brief."}],
            },
            {
                "type": "message",
                "role": "developer",
                "content": [{"type": "input_text", "text": "Use tools."}],
            },
            {
                "type": "message",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is this?"},
                    {"type": "input_image", "image_url": "data:image/png;base64,iVBO", "detail": "low"},
                    {"type": "input_image", "image_url": "https://x/y.png", "detail": "auto"},
                ],
            },
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Let me look.", "annotations": []}],
            },
            {"type": "function_call", "call_id": "call_1", "name": "look", "arguments": '{"q":"x"}'},
            {"type": "function_call", "call_id": "call_2", "name": "look", "arguments": '{"q":"y"}'},
            {"type": "function_call_output", "call_id": "call_1", "output": "a cat"},
            {"type": "function_call_output", "call_id": "call_2", "output": "a dog"},
        ],
        "store": False,
        "stream": True,
        "max_output_tokens": 50,
        "temperature": 0.5,
        "top_p": 0.9,
        "tools": [
            {"type": "function", "name": "look", "description": "Look up", "parameters": {"type": "object"}}
        ],
        "tool_choice": {"type": "function", "name": "look"},
        "parallel_tool_calls": False,
        "text": {
            "format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}, "strict": True}
        },
        "user": "u1",
        "reasoning": {"effort": "low"},
        "service_tier": "flex",
    }
    # Parsing what was built gives the same conversation back (instructions became a message;
    # OpenAI requires an image's detail, so an unset one is sent as "auto").
    back = rsp.parse_request(rsp.build_request(req)).messages
    assert back[2].content[2] == ImagePart(url="https://x/y.png", detail="auto")
    back[2].content[2] = ImagePart(url="https://x/y.png")
    assert back == MESSAGES


def test_parse_response_round_trip() -> None:
    resp = GenerationResponse(
        id="resp_q",
        model="m",
        created=3,
        text="hi",
        reasoning="r",
        tool_calls=[ToolCall("c1", "f", "{}")],
        finish_reason="tool_calls",
        usage=Usage(4, 5, cache_read_tokens=1),
    )
    body = rsp.build_response(resp, response_id="resp_q", created_at=3, echoed=ECHO)
    assert rsp.parse_response(body) == resp
    cut = rsp.build_response(
        GenerationResponse(id="resp_q", model="m", created=3, text="h", finish_reason="length"),
        response_id="resp_q",
        created_at=3,
        echoed=ECHO,
    )
    assert rsp.parse_response(cut).finish_reason == "length"


def test_stream_parser_reads_what_the_writer_wrote() -> None:
    source = [
        StreamStart("resp_s", "m", 7),
        ReasoningDelta("think"),
        TextDelta("ok"),
        ToolCallDelta(0, "", "call_a", "look"),
        ToolCallDelta(0, "{}"),
        ToolCallDelta(1, '{"q":"y"}', "call_b", "look"),
        Finish("tool_calls"),
        UsageReport(Usage(3, 4)),
    ]
    events, _ = _stream(source)
    parser = rsp.StreamParser()
    parsed = [e for obj in events for e in parser.feed(obj)]
    assert parsed == [
        StreamStart("resp_s", "m", 7),
        ReasoningDelta("think"),
        TextDelta("ok"),
        ToolCallDelta(0, "", "call_a", "look"),
        ToolCallDelta(0, "{}"),
        ToolCallDelta(1, "", "call_b", "look"),
        ToolCallDelta(1, '{"q":"y"}'),
        Finish("tool_calls"),
        UsageReport(Usage(3, 4)),
    ]


def test_stream_parser_failed_raises() -> None:
    with pytest.raises(StreamError) as err:
        rsp.StreamParser().feed(
            {"type": "response.failed", "response": {"error": {"code": "server_error", "message": "boom"}}}
        )
    assert err.value.message == "boom"
