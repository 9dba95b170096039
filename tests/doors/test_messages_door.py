"""The /v1/messages door.

The translation parts (stream, errors, auth header) are checked directly here; the end-to-end
tests with the official anthropic SDK against a gateway process join them once the door is
wired into the pipeline.
"""

from __future__ import annotations

import orjson

from gateway.doors import messages
from providers.formats import openai_chat
from providers.formats.sse import SSEDecoder
from providers.schema import Finish


def _chunk(delta: dict, finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return b"data: " + orjson.dumps({"id": "c1", "created": 1, "model": "m", "choices": [choice]}) + b"\n\n"


def test_stream_of_tool_calls_arrives_whole_and_in_order() -> None:
    stream = messages.MessagesStream(input_tokens=3)
    out = stream.feed(_chunk({"role": "assistant", "content": ""}))
    out += stream.feed(
        _chunk({"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f", "arguments": ""}}]})
    )
    # two events in one piece of bytes, split mid-event on purpose
    both = _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"x":1}'}}]}) + _chunk(
        {"tool_calls": [{"index": 1, "id": "b", "function": {"name": "g", "arguments": "{}"}}]}
    )
    out += stream.feed(both[:30]) + stream.feed(both[30:])
    out += stream.feed(_chunk({}, "tool_calls"))
    out += stream.end()
    names = [e.event for e in SSEDecoder().feed(out)]
    assert names == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    events = [orjson.loads(e.data) for e in SSEDecoder().feed(out)]
    assert events[2]["content_block"] == {"type": "tool_use", "id": "a", "name": "f", "input": {}}
    assert events[5]["content_block"] == {"type": "tool_use", "id": "b", "name": "g", "input": {}}
    assert events[8]["delta"]["stop_reason"] == "tool_use"


def test_upstream_error_event_becomes_anthropic_error_event_and_ends_the_stream() -> None:
    stream = messages.MessagesStream(input_tokens=0)
    stream.feed(_chunk({"content": "hi"}))
    out = stream.feed(b'data: {"error": {"message": "boom", "type": "server_error"}}\n\n')
    assert SSEDecoder().feed(out)[-1].event == "error"
    assert orjson.loads(SSEDecoder().feed(out)[-1].data) == {
        "type": "error",
        "error": {"type": "api_error", "message": "boom"},
    }
    assert stream.failed
    assert stream.feed(_chunk({"content": "late"})) == b""
    assert stream.end() == b""


def test_typed_path_writes_the_same_events_as_the_raw_path() -> None:
    raw = messages.MessagesStream(input_tokens=2)
    body = raw.feed(
        _chunk({"role": "assistant", "content": ""}) + _chunk({"content": "hi"}) + _chunk({}, "stop")
    )
    body += raw.end()
    typed = messages.MessagesStream(input_tokens=2)
    parsed = openai_chat.StreamParser()
    out = b""
    for event in SSEDecoder().feed(_chunk({"role": "assistant", "content": ""}) + _chunk({"content": "hi"})):
        for item in parsed.feed_data(event.data):
            out += typed.write(item)
    out += typed.write(Finish("stop")) + typed.end()
    assert out == body
    assert b'"text_delta","text":"hi"' in out


def test_plain_answer_both_paths() -> None:
    completion = {
        "id": "chatcmpl-1",
        "created": 1,
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "length"}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
    raw = orjson.loads(messages.write_response(completion))
    assert raw["content"] == [{"type": "text", "text": "hi"}]
    assert raw["stop_reason"] == "max_tokens"
    assert raw["usage"]["input_tokens"] == 3
    assert messages.write_response(openai_chat.parse_response(completion)) == messages.write_response(
        completion
    )


def test_error_shape_and_auth_headers() -> None:
    assert orjson.loads(messages.error_body(429, "slow down")) == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "slow down"},
    }
    assert [messages.error_type(s) for s in (400, 401, 403, 404, 500, 503)] == [
        "invalid_request_error",
        "authentication_error",
        "permission_error",
        "not_found_error",
        "api_error",
        "overloaded_error",
    ]
    assert messages.api_key({b"x-api-key": b"sk-1"}) == "sk-1"
    assert messages.api_key({b"authorization": b"Bearer sk-2"}) == "sk-2"
    assert messages.api_key({}) is None
