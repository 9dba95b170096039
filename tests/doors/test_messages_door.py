"""The /v1/messages door.

What the door declares (reading, writing, errors, replay from cache) is checked directly here;
the end-to-end tests with the official anthropic SDK against a gateway process are in
test_messages_e2e.py.
"""

from __future__ import annotations

from typing import Any, cast

import orjson
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import RawMessageStreamEvent

from gateway.doors.base import DoorCall
from gateway.doors.messages import (
    MessagesDoor,
    error_body,
    error_type,
    estimate_input_tokens,
    read_count_request,
)
from gateway.errors import GatewayError
from providers.formats import openai_chat
from providers.formats.sse import SSEDecoder

DOOR = MessagesDoor()
CALL = cast(DoorCall, None)  # read() consults nothing besides the body on this door

BODY = {
    "model": "m",
    "max_tokens": 20,
    "stream": True,
    "system": "Be brief.",
    "messages": [{"role": "user", "content": "What is the weather in Oslo?"}],
    "tools": [{"name": "weather", "input_schema": {"type": "object"}}],
}


def _chunk(delta: dict, finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return b"data: " + orjson.dumps({"id": "c1", "created": 1, "model": "m", "choices": [choice]}) + b"\n\n"


def _sdk_snapshot(wire: bytes) -> Any:
    from anthropic._models import construct_type

    snapshot, bufs = None, {}
    for event in SSEDecoder().feed(wire):
        parsed = construct_type(type_=RawMessageStreamEvent, value=orjson.loads(event.data))
        snapshot = accumulate_event(event=parsed, current_snapshot=snapshot, json_bufs=bufs)
    return snapshot


async def test_read_gives_typed_request_estimate_and_cache_material() -> None:
    req = await DOOR.read(orjson.dumps(BODY), CALL)
    assert (req.model, req.stream, req.body) == ("m", True, None)
    assert req.request is not None and req.request.messages[0].role == "system"
    assert "stream" not in req.cache_material and req.cache_material["max_tokens"] == 20
    assert req.estimated_tokens == req.state + 20 and req.state > 0


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b"{not json", None),
        (b"[]", None),
        (orjson.dumps({"model": "m", "messages": []}), "max_tokens"),
        (orjson.dumps({**BODY, "max_tokens": 0}), "max_tokens"),
        (orjson.dumps({**BODY, "max_tokens": 2**31}), "max_tokens"),
        (
            orjson.dumps({**BODY, "messages": [{"role": "user", "content": [{"type": "audio"}]}]}),
            "messages.0.content.0.type",
        ),
    ],
)
async def test_bad_bodies_are_400_in_anthropic_shape(raw: bytes, param: str | None) -> None:
    with pytest.raises(GatewayError) as exc:
        await DOOR.read(raw, CALL)
    assert (exc.value.status, exc.value.param) == (400, param)
    assert orjson.loads(DOOR.write_error(exc.value))["error"]["type"] == "invalid_request_error"


async def test_streamed_tool_calls_from_an_openai_upstream_arrive_whole_and_in_order() -> None:
    """The adapter direction (openai_chat.StreamParser) feeding this door's writer, read by the SDK."""
    req = await DOOR.read(orjson.dumps(BODY), CALL)
    upstream = [
        _chunk({"role": "assistant", "content": ""}),
        _chunk({"content": "Checking."}),
        _chunk({"tool_calls": [{"index": 0, "id": "a", "function": {"name": "weather", "arguments": ""}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]}),
        _chunk({"tool_calls": [{"index": 1, "id": "b", "function": {"name": "weather", "arguments": "{}"}}]}),
        _chunk({}, "tool_calls"),
        b'data: {"id":"c1","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4}}\n\n',
    ]
    parser, writer = openai_chat.StreamParser(), DOOR.stream_writer(req)
    wire = (
        b"".join(writer.write(e) for chunk in upstream for e in parser.feed_data(chunk[6:-2])) + writer.end()
    )
    names = [e.event for e in SSEDecoder().feed(wire)]
    assert names == [
        "message_start", "ping",
        "content_block_start", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop",
    ]  # fmt: skip
    message = _sdk_snapshot(wire)
    assert [(b.type, getattr(b, "id", None)) for b in message.content] == [
        ("text", None),
        ("tool_use", "a"),
        ("tool_use", "b"),
    ]
    assert message.content[1].input == {"city": "Oslo"}
    assert message.stop_reason == "tool_use"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (9, 4)


async def test_replay_of_a_cached_answer_is_the_same_message() -> None:
    req = await DOOR.read(orjson.dumps(BODY), CALL)
    call = {"id": "t", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}}
    completion = {
        "id": "chatcmpl-1",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi",
                     "tool_calls": [call]},
                     "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1},
    }  # fmt: skip
    plain = DOOR.write(openai_chat.parse_response(completion), req)
    replayed = _sdk_snapshot(DOOR.replay(plain, req))
    expected = {k: v for k, v in orjson.loads(plain).items() if v is not None}
    assert replayed.model_dump(exclude_none=True) == expected


def test_error_shapes_and_auth() -> None:
    err = GatewayError(429, "slow down")
    budget = GatewayError(400, "Budget has been exceeded", "budget_exceeded", "budget_exceeded")
    assert orjson.loads(DOOR.write_error(budget))["error"] == {
        "type": "billing_error",
        "message": "Budget has been exceeded",
    }
    assert orjson.loads(DOOR.write_error(err)) == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "slow down"},
    }
    assert DOOR.stream_error(err).startswith(b"event: error\ndata: ")
    assert orjson.loads(error_body(503, "x"))["error"]["type"] == "overloaded_error"
    assert [error_type(s) for s in (400, 401, 403, 404, 500)] == [
        "invalid_request_error", "authentication_error", "permission_error", "not_found_error", "api_error",
    ]  # fmt: skip
    assert DOOR.token({b"x-api-key": b"sk-1"}) == "sk-1"
    assert DOOR.token({b"authorization": b"Bearer sk-2"}) == "sk-2"
    assert DOOR.token({}) is None


def test_count_tokens_estimate() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x" * 400}]}
    req = read_count_request(orjson.dumps(body))
    assert (req.model, estimate_input_tokens(req)) == ("m", 104)
