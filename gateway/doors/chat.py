"""``POST /v1/chat/completions``: OpenAI Chat Completions, the hot path.

Reads only what the gateway itself relies on (model, stream, the integers it does arithmetic
with); the body goes upstream raw and the upstream's bytes come back untouched when the upstream
speaks OpenAI Chat (every adapter today). Reference:
https://platform.openai.com/docs/api-reference/chat/create
"""

from __future__ import annotations

from typing import Any, ClassVar

import orjson

from gateway.cache.stream import replay_sse
from gateway.doors.base import Door, DoorCall, DoorOperation, DoorRequest, EventWriter
from gateway.doors.json_body import parse_object, require_model
from gateway.errors import bad_request
from gateway.limits.estimate import MAX_COMPLETION_TOKENS, MAX_N
from providers.formats import openai_chat
from providers.schema import GenerationResponse

# Integer fields the gateway does arithmetic with (the TPM reservation, a Redis integer): (low, high).
_INT_FIELDS = (
    ("max_tokens", 1, MAX_COMPLETION_TOKENS),
    ("max_completion_tokens", 1, MAX_COMPLETION_TOKENS),
    ("n", 1, MAX_N),
)


class ChatDoor(Door):
    operation: ClassVar[DoorOperation] = "chat"
    cache_streams: ClassVar[bool] = True

    async def read(self, raw: bytes, call: DoorCall) -> DoorRequest:
        body = parse_object(raw)
        model = require_model(body)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise bad_request("'messages' is required and must be a non-empty array", "messages")
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise bad_request(f"messages[{i}] must be an object with a 'role'", f"messages[{i}]")
        stream = check_stream(body)
        check_ints(body, _INT_FIELDS)
        return DoorRequest(
            model=model,
            stream=stream,
            body=body,
            cache_material=body,
            estimated_tokens=_estimate_tokens(body),
            include_usage=stream and wants_usage(body),
        )

    def write(self, response: GenerationResponse, req: DoorRequest) -> bytes:
        return orjson.dumps(openai_chat.build_response(response))

    def stream_writer(self, req: DoorRequest) -> EventWriter:
        return openai_chat.StreamWriter(include_usage=req.include_usage)

    def replay(self, cached: bytes, req: DoorRequest) -> bytes | None:
        return replay_sse(cached, include_usage=req.include_usage)


def check_stream(body: dict[str, Any]) -> bool:
    """``stream`` and ``stream_options`` as OpenAI accepts them (chat and completions alike)."""
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise bad_request("'stream' must be a boolean", "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad_request("'stream_options' must be an object", "stream_options")
    if options is not None and not stream:
        raise bad_request("'stream_options' is only allowed when 'stream' is true", "stream_options")
    return bool(stream)


def check_ints(body: dict[str, Any], fields: tuple[tuple[str, int, int], ...]) -> None:
    for name, low, high in fields:
        value = body.get(name)
        if value is not None and (type(value) is not int or not low <= value <= high):
            raise bad_request(f"'{name}' must be an integer from {low} to {high}", name)


def wants_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


def _estimate_tokens(body: dict[str, Any]) -> int:
    """A cheap upper-ish estimate for the limiter: ~4 characters a token, plus the output cap."""
    chars = 0
    for message in body["messages"]:
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    chars += len(part["text"])
    cap = body.get("max_completion_tokens") or body.get("max_tokens") or 0
    return chars // 4 + (cap if isinstance(cap, int) else 0)
