"""``POST /v1/messages`` and ``POST /v1/messages/count_tokens``: the Anthropic Messages door.

What this door declares (the pipeline conducts the stages): the operation ("messages"), how its
body becomes the internal request (``read_request``), the body an OpenAI-compatible upstream is
sent (``upstream_body``), how the upstream's answer is written back (``write_response``,
``MessagesStream``), and its error shape (``error_body``: Anthropic's
``{"type": "error", "error": {"type", "message"}}``, never OpenAI's, on this door).

Auth: the ``anthropic`` SDK sends its key as ``x-api-key``; bearer auth is accepted too.
``anthropic-version`` is accepted and not checked (one version of the API is spoken).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from providers.formats import anthropic_messages, openai_chat
from providers.formats.errors import FormatError, StreamError
from providers.formats.sse import SSEDecoder
from providers.schema import GenerationRequest, GenerationResponse, Message, StreamEvent, TextPart

OPERATION = "messages"
PATH = "/v1/messages"
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"

# Anthropic's error type for each status (https://docs.anthropic.com/en/api/errors).
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type(status: int) -> str:
    return _ERROR_TYPES.get(status, "invalid_request_error" if 400 <= status < 500 else "api_error")


def error_body(status: int, message: str) -> bytes:
    """Anthropic's error shape for an answer with ``status``."""
    return orjson.dumps({"type": "error", "error": {"type": error_type(status), "message": message}})


def api_key(headers: Mapping[bytes, bytes]) -> str | None:
    """The key from ``x-api-key`` (what the anthropic SDK sends), else from ``Authorization: Bearer``."""
    key = headers.get(b"x-api-key")
    if key:
        return key.decode("latin-1").strip()
    auth = headers.get(b"authorization", b"")
    if auth[:7].lower() == b"bearer ":
        return auth[7:].decode("latin-1").strip()
    return None


def read_request(body: Mapping[str, Any]) -> GenerationRequest:
    """The body as the internal request; ``FormatError`` (a 400 naming the field) if invalid."""
    return anthropic_messages.parse_request(body)


def read_count_tokens(body: Mapping[str, Any]) -> GenerationRequest:
    return anthropic_messages.parse_request(body, require_max_tokens=False)


def upstream_body(req: GenerationRequest, model: str) -> bytes:
    """The Chat Completions body for an OpenAI-compatible upstream serving ``model``."""
    chat = openai_chat.build_request(req)
    chat["model"] = model
    return orjson.dumps(chat)


def write_response(answer: GenerationResponse | Mapping[str, Any]) -> bytes:
    """The Anthropic ``message`` body for a typed answer, or for an upstream's raw ``chat.completion``."""
    if not isinstance(answer, GenerationResponse):
        answer = openai_chat.parse_response(answer)
    return orjson.dumps(anthropic_messages.build_response(answer))


# Rough but stated: ~4 characters a token plus a few per message, as the limiter's admission
# estimate does. Used when the model's deployment has no tokenizer the gateway can run.
_CHARS_PER_TOKEN = 4
_PER_MESSAGE = 4


def estimate_input_tokens(req: GenerationRequest) -> int:
    """An estimate of the prompt's tokens (text, tool schemas), for count_tokens without a tokenizer."""
    chars = sum(_message_chars(m) for m in req.messages)
    chars += sum(len(t.name) + len(t.description or "") + len(orjson.dumps(t.parameters)) for t in req.tools)
    return chars // _CHARS_PER_TOKEN + _PER_MESSAGE * len(req.messages)


def _message_chars(msg: Message) -> int:
    text = sum(len(p.text) for p in msg.content if isinstance(p, TextPart))
    return text + sum(len(c.name) + len(c.arguments) for c in msg.tool_calls)


class MessagesStream:
    """An upstream's stream in, Anthropic's event sequence out.

    Typed path: ``write`` one ``StreamEvent``. Raw path (an OpenAI-compatible upstream's bytes):
    ``feed`` takes the bytes of one or more ``data:`` events as the router yields them. ``end``
    closes the message (message_delta with stop_reason and usage, message_stop); ``fail`` ends a
    stream that broke after it started with Anthropic's ``error`` event. An upstream error event
    inside the stream (``data: {"error": ...}``) is turned into that same ``error`` event.
    """

    __slots__ = ("_decoder", "_failed", "_parser", "_writer")

    def __init__(self, *, input_tokens: int) -> None:
        self._decoder = SSEDecoder()
        self._parser = openai_chat.StreamParser()
        self._writer = anthropic_messages.StreamWriter(input_tokens=input_tokens)
        self._failed = False

    @property
    def failed(self) -> bool:
        return self._failed

    def write(self, event: StreamEvent) -> bytes:
        return b"" if self._failed else self._writer.write(event)

    def feed(self, chunk: bytes) -> bytes:
        if self._failed:
            return b""
        out = b""
        try:
            for event in self._decoder.feed(chunk):
                for item in self._parser.feed_data(event.data):
                    out += self._writer.write(item)
        except StreamError as exc:
            return out + self.fail(529 if exc.type == "overloaded_error" else 500, exc.message)
        except FormatError as exc:
            return out + self.fail(502, f"upstream stream could not be translated: {exc.message}")
        return out

    def end(self) -> bytes:
        return b"" if self._failed else self._writer.end()

    def fail(self, status: int, message: str) -> bytes:
        self._failed = True
        return anthropic_messages.error_event(error_type(status), message)
