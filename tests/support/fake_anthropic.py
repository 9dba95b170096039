"""A fake Anthropic Messages API: a real HTTP server on loopback that speaks ``POST /v1/messages``.

Wire format followed (Anthropic API reference):
- https://docs.anthropic.com/en/api/messages (request body; the ``message`` object; content
  blocks text, image (base64 with media type jpeg/png/gif/webp, or url), tool_use, tool_result,
  thinking; ``stop_reason``; ``usage`` with ``cache_creation_input_tokens`` and
  ``cache_read_input_tokens``)
- https://docs.anthropic.com/en/api/messages-streaming (``event: NAME`` + ``data: {...}``:
  message_start, content_block_start, ping, content_block_delta with text_delta /
  input_json_delta / thinking_delta / signature_delta, content_block_stop, message_delta,
  message_stop; an ``error`` event may replace the rest)
- https://docs.anthropic.com/en/api/errors (``{"type": "error", "error": {"type", "message"}}``;
  400 invalid_request_error, 401 authentication_error, 403 permission_error, 404
  not_found_error, 413 request_too_large, 429 rate_limit_error, 500 api_error, 529
  overloaded_error)
- https://docs.anthropic.com/en/api/versioning (``anthropic-version`` is required)
- https://docs.anthropic.com/en/api/messages-count-tokens (``POST /v1/messages/count_tokens``: the
  prompt fields of a Messages body, answered ``{"input_tokens": N}``; generation fields such as
  ``max_tokens``, ``stream`` or ``temperature`` are "Extra inputs" there). The count is a stand-in
  tokenizer's (``count_prompt``: one token per word or punctuation mark of the JSON of system,
  messages, tools and tool_choice), so a test can tell it from any estimate.

Refused as the API refuses them (400 invalid_request_error unless said): a missing ``x-api-key``
(401) or a wrong one (401), a missing ``anthropic-version``; a body that is not JSON; a missing or
non-positive ``max_tokens``; fields the API does not have ("Extra inputs are not permitted": an
OpenAI field such as ``response_format`` or ``seed`` sent on); a ``system`` role inside
``messages``; an empty message (but a final assistant prefill), an empty text block; a
``tool_result`` not answering a ``tool_use`` of the previous assistant turn, a ``tool_use`` left
unanswered by the next user turn, text before the tool results of a turn; images of other media
types; tools without an object ``input_schema``; a ``tool_choice`` naming an unknown tool;
``thinking`` with a budget under 1024 or not below ``max_tokens``, or with forced tool use;
``temperature`` outside [0, 1]; a ``thinking`` block in the history without its ``signature``, or
with one the fake did not give for that text (signatures are ``sign(thinking)``); with thinking on,
a tool-result turn whose assistant turn does not start with its thinking
(https://docs.anthropic.com/en/docs/build-with-claude/extended-thinking, "Preserving thinking
blocks"). Consecutive turns of one role are merged, as the API documents.

Usage::

    with FakeAnthropic(api_key="sk-ant-test") as fake:
        fake.base_url                                  # "http://127.0.0.1:PORT" (no /v1)
        fake.set_behavior(Behavior(text="hi"), model="claude-x")   # or the default behaviour
        fake.enqueue(Behavior(status=429, headers={"retry-after": "7"}))   # one-shot, in order
        fake.requests                                  # every request received (RecordedRequest)
        fake.wait_for_cancel(5.0)                      # a stream was abandoned by the client
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tests.support.loopback_server import LoopbackServer

_TOP_LEVEL = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "system",
        "stop_sequences",
        "stream",
        "temperature",
        "top_p",
        "top_k",
        "tools",
        "tool_choice",
        "thinking",
        "metadata",
        "service_tier",
        "container",
        "mcp_servers",
        "cache_control",
        "output_config",
        "inference_geo",
        "speed",
        "diagnostics",
        "context_management",
    }
)
# What count_tokens takes: the prompt, not the generation settings.
_COUNT_TOP_LEVEL = frozenset(
    {
        "model",
        "messages",
        "system",
        "tools",
        "tool_choice",
        "thinking",
        "mcp_servers",
        "cache_control",
        "output_config",
        "speed",
    }
)
_TOKEN = re.compile(r"\w+|[^\w\s]")
_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")


@dataclass
class Behavior:
    """How the fake answers one request."""

    status: int = 200
    error_type: str = "api_error"
    error_message: str = "fake upstream error"
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # before the response starts
    text: str = "Hello from the fake Claude."
    thinking: str | None = None  # a thinking block before the text
    # tool_use blocks after the text: (id, name, input object); stop_reason becomes tool_use.
    tool_uses: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    stop_reason: str | None = None  # default: tool_use with tool_uses, else end_turn
    stop_sequence: str | None = None
    input_tokens: int = 21
    output_tokens: int = 9
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    fragment: int = 5  # characters per text_delta / thinking_delta / input_json_delta
    chunk_delay_s: float = 0.0  # between stream events
    # Streams: replace the rest with this ``error`` event's (type, message) after that many deltas.
    error_event: tuple[str, str] | None = None
    error_after_deltas: int = 0
    end_without_stop: bool = False  # end a stream cleanly, but before message_stop

    def reason(self) -> str:
        return self.stop_reason or ("tool_use" if self.tool_uses else "end_turn")

    def content(self) -> list[dict[str, Any]]:
        blocks: list[dict[str, Any]] = []
        if self.thinking is not None:
            blocks.append({"type": "thinking", "thinking": self.thinking, "signature": sign(self.thinking)})
        if self.text:
            blocks.append({"type": "text", "text": self.text})
        for tool_id, name, arguments in self.tool_uses:
            blocks.append({"type": "tool_use", "id": tool_id, "name": name, "input": arguments})
        return blocks

    def usage(self) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "output_tokens": self.output_tokens,
        }


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class FakeAnthropic:
    """The fake server; a context manager that runs it in a background thread."""

    def __init__(self, api_key: str = "sk-ant-fake-key", default: Behavior | None = None) -> None:
        self.api_key = api_key
        self.default = default or Behavior()
        self.by_model: dict[str, Behavior] = {}
        self.queue: deque[Behavior] = deque()
        self.requests: list[RecordedRequest] = []
        self.cancelled = 0
        self._cancel_event = threading.Event()
        self._lock = threading.Lock()
        self._loopback: LoopbackServer | None = None
        self.port = 0

    # ------------------------------------------------------------------ control

    @property
    def base_url(self) -> str:
        """The API base to configure (``api_base``): the adapter appends ``/v1/messages``."""
        return f"http://127.0.0.1:{self.port}"

    def set_behavior(self, behavior: Behavior, model: str | None = None) -> None:
        with self._lock:
            if model is None:
                self.default = behavior
            else:
                self.by_model[model] = behavior

    def enqueue(self, *behaviors: Behavior) -> None:
        with self._lock:
            self.queue.extend(behaviors)

    def reset(self) -> None:
        with self._lock:
            self.default = Behavior()
            self.by_model.clear()
            self.queue.clear()
            self.requests.clear()
            self.cancelled = 0
            self._cancel_event.clear()

    def wait_for_cancel(self, timeout: float) -> bool:
        return self._cancel_event.wait(timeout)

    def last(self, model: str | None = None) -> RecordedRequest:
        """The last request received (for ``model``, when given)."""
        with self._lock:
            found = [r for r in self.requests if model is None or r.body.get("model") == model]
        assert found, f"no request for {model!r}"
        return found[-1]

    def _behavior_for(self, model: str) -> Behavior:
        with self._lock:
            if self.queue:
                return self.queue.popleft()
            return self.by_model.get(model, self.default)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeAnthropic:
        self._loopback = LoopbackServer(
            Starlette(
                routes=[
                    Route("/v1/messages", self._messages, methods=["POST"]),
                    Route("/v1/messages/count_tokens", self._count_tokens, methods=["POST"]),
                ]
            ),
            log_level="warning",
            access_log=False,
            lifespan="off",
            loop="asyncio",
            http="h11",
            name="fake-anthropic",
        )
        self.port = self._loopback.start()
        return self

    def stop(self) -> None:
        if self._loopback is not None:
            self._loopback.stop()

    def __enter__(self) -> FakeAnthropic:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ HTTP

    async def _read(self, request: Request) -> dict[str, Any] | Response:
        """The request's JSON body (recorded), or the error the API answers before reading it."""
        key = request.headers.get("x-api-key")
        if key is None:
            return _error(401, "authentication_error", "x-api-key header is required")
        if key != self.api_key:
            return _error(401, "authentication_error", "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return _error(400, "invalid_request_error", "anthropic-version: header is required")
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _error(400, "invalid_request_error", "There was an error parsing the body of your request")
        if not isinstance(body, dict):
            return _error(400, "invalid_request_error", "Input should be an object")
        with self._lock:
            self.requests.append(RecordedRequest(request.url.path, dict(request.headers), body))
        return body

    async def _count_tokens(self, request: Request) -> Response:
        body = await self._read(request)
        if isinstance(body, Response):
            return body
        problem = validate_count(body)
        if problem is not None:
            return _error(400, "invalid_request_error", problem)
        behavior = self._behavior_for(str(body["model"]))
        if behavior.status >= 400:
            return _error(behavior.status, behavior.error_type, behavior.error_message, behavior.headers)
        return Response(
            orjson.dumps({"input_tokens": count_prompt(body)}), 200, media_type="application/json"
        )

    async def _messages(self, request: Request) -> Response:
        body = await self._read(request)
        if isinstance(body, Response):
            return body
        problem = validate(body)
        if problem is not None:
            return _error(400, "invalid_request_error", problem)
        model = str(body["model"])
        behavior = self._behavior_for(model)
        if behavior.delay_s and not await self._wait_unless_disconnected(request, behavior.delay_s):
            return Response(b"", 499)
        if behavior.status >= 400:
            return _error(behavior.status, behavior.error_type, behavior.error_message, behavior.headers)
        message_id = f"msg_{uuid.uuid4().hex[:24]}"
        if body.get("stream"):
            return StreamingResponse(
                self._stream(message_id, model, behavior),
                media_type="text/event-stream",
                headers={"cache-control": "no-cache", **behavior.headers},
            )
        message = {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": behavior.content(),
            "stop_reason": behavior.reason(),
            "stop_sequence": behavior.stop_sequence,
            "usage": behavior.usage(),
        }
        return Response(orjson.dumps(message), 200, headers=behavior.headers, media_type="application/json")

    async def _wait_unless_disconnected(self, request: Request, delay: float) -> bool:
        deadline = time.monotonic() + delay
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(0.02, left))
            if await request.is_disconnected():
                self._note_cancel()
                return False
        return True

    def _note_cancel(self) -> None:
        with self._lock:
            self.cancelled += 1
            self._cancel_event.set()

    async def _stream(self, message_id: str, model: str, behavior: Behavior) -> AsyncIterator[bytes]:
        """The documented event sequence, block by block."""
        completed = False
        try:
            start_usage = {**behavior.usage(), "output_tokens": 1}
            message = {
                "id": message_id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": start_usage,
            }
            yield _event("message_start", {"type": "message_start", "message": message})
            deltas = 0
            for index, block in enumerate(behavior.content()):
                yield _event("content_block_start", _block_start(index, block))
                if index == 0:
                    yield _event("ping", {"type": "ping"})
                for delta in _block_deltas(block, behavior.fragment):
                    if behavior.error_event is not None and deltas >= behavior.error_after_deltas:
                        kind, text = behavior.error_event
                        yield _event("error", {"type": "error", "error": {"type": kind, "message": text}})
                        completed = True
                        return
                    if behavior.chunk_delay_s:
                        await asyncio.sleep(behavior.chunk_delay_s)
                    yield _event(
                        "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
                    )
                    deltas += 1
                yield _event("content_block_stop", {"type": "content_block_stop", "index": index})
            delta = {"stop_reason": behavior.reason(), "stop_sequence": behavior.stop_sequence}
            usage = {"output_tokens": behavior.output_tokens}
            yield _event("message_delta", {"type": "message_delta", "delta": delta, "usage": usage})
            completed = True
            if behavior.end_without_stop:
                return
            yield _event("message_stop", {"type": "message_stop"})
        finally:
            if not completed:
                self._note_cancel()


def _block_start(index: int, block: dict[str, Any]) -> dict[str, Any]:
    kind = block["type"]
    if kind == "text":
        start: dict[str, Any] = {"type": "text", "text": ""}
    elif kind == "thinking":
        start = {"type": "thinking", "thinking": "", "signature": ""}
    else:
        start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
    return {"type": "content_block_start", "index": index, "content_block": start}


def _block_deltas(block: dict[str, Any], size: int) -> list[dict[str, Any]]:
    kind = block["type"]
    if kind == "text":
        return [{"type": "text_delta", "text": piece} for piece in _pieces(block["text"], size)]
    if kind == "thinking":
        pieces = [{"type": "thinking_delta", "thinking": p} for p in _pieces(block["thinking"], size)]
        return [*pieces, {"type": "signature_delta", "signature": block["signature"]}]
    # As the docs show: the input's JSON arrives as fragments, the first one empty.
    text = orjson.dumps(block["input"]).decode()
    return [{"type": "input_json_delta", "partial_json": p} for p in ["", *_pieces(text, size)]]


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def _event(name: str, obj: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


def _error(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> Response:
    body = {"type": "error", "error": {"type": kind, "message": message}}
    return Response(orjson.dumps(body), status, headers=headers, media_type="application/json")


# ---- validation, as the API answers -----------------------------------------------------------


def validate(body: dict[str, Any]) -> str | None:
    """The API's 400 message for ``body``, or None when it would be accepted."""
    extra = sorted(set(body) - _TOP_LEVEL)
    if extra:
        return f"{extra[0]}: Extra inputs are not permitted"
    if not isinstance(body.get("model"), str):
        return "model: Field required"
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        return "max_tokens: Field required"
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        return "max_tokens: Input should be greater than or equal to 1"
    temperature = body.get("temperature")
    if temperature is not None and not 0 <= temperature <= 1:
        return "temperature: Input should be less than or equal to 1"
    problem = _validate_system(body.get("system"))
    if problem is None:
        problem = _validate_tools(body)
    if problem is None:
        problem = _validate_thinking(body)
    if problem is None:
        problem = _validate_messages(body.get("messages"))
    if problem is None and (body.get("thinking") or {}).get("type") == "enabled":
        problem = _validate_thinking_kept(body["messages"])
    return problem


def sign(thinking: str) -> str:
    """The fake's signature of a thinking block: the API verifies what comes back against it."""
    return "sig-" + hashlib.sha256(thinking.encode()).hexdigest()[:24]


def _validate_thinking_kept(messages: list[dict[str, Any]]) -> str | None:
    """With thinking on, the assistant turn whose tool use the last user turn answers must start
    with its thinking (the documented rule for tool use with extended thinking)."""
    last = len(messages) - 1
    if last < 1 or messages[last].get("role") != "user" or messages[last - 1].get("role") != "assistant":
        return None
    content = messages[last]["content"]
    answers_tools = isinstance(content, list) and any(b.get("type") == "tool_result" for b in content)
    blocks = messages[last - 1]["content"]
    if not answers_tools or not isinstance(blocks, list) or not blocks:
        return None
    first = blocks[0].get("type")
    if first in ("thinking", "redacted_thinking"):
        return None
    return (
        f"messages.{last - 1}.content.0.type: Expected `thinking` or `redacted_thinking`, but found "
        f"`{first}`. When `thinking` is enabled, a final `assistant` message must start with a thinking "
        "block (preceeding the lastmost set of `tool_use` and `tool_result` blocks). We recommend you "
        "include thinking blocks from previous turns."
    )


def validate_count(body: dict[str, Any]) -> str | None:
    """count_tokens' 400 message for ``body``, or None when it would be counted."""
    extra = sorted(set(body) - _COUNT_TOP_LEVEL)
    if extra:
        return f"{extra[0]}: Extra inputs are not permitted"
    if not isinstance(body.get("model"), str):
        return "model: Field required"
    thinking = body.get("thinking")
    if thinking is not None and thinking.get("type") == "enabled":
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or budget < 1024:
            return "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
    problem = _validate_system(body.get("system"))
    if problem is None:
        problem = _validate_tools(body)
    if problem is None:
        problem = _validate_messages(body.get("messages"))
    return problem


def count_prompt(body: dict[str, Any]) -> int:
    """The fake's token count of a prompt: words and punctuation marks of its JSON."""
    prompt = [body.get("system"), body["messages"], body.get("tools"), body.get("tool_choice")]
    return len(_TOKEN.findall(orjson.dumps(prompt).decode()))


def _validate_system(system: Any) -> str | None:
    if system is None or isinstance(system, str):
        return None
    if not isinstance(system, list):
        return "system: Input should be a valid list"
    for i, block in enumerate(system):
        if (
            not isinstance(block, dict)
            or block.get("type") != "text"
            or not isinstance(block.get("text"), str)
        ):
            return f"system.{i}: Input should be a text block"
        if not block["text"]:
            return "system: text content blocks must be non-empty"
    return None


def _validate_tools(body: dict[str, Any]) -> str | None:
    names: list[str] = []
    for i, tool in enumerate(body.get("tools") or []):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            return f"tools.{i}.name: Field required"
        if not _TOOL_NAME.match(tool["name"]):
            return f"tools.{i}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'"
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            return f"tools.{i}.input_schema: Field required"
        if schema.get("type") != "object":
            return f"tools.{i}.input_schema.type: Input should be 'object'"
        names.append(tool["name"])
    choice = body.get("tool_choice")
    if choice is None:
        return None
    if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
        return "tool_choice: Input tag does not match any of the expected tags: 'auto', 'any', 'tool', 'none'"
    if choice["type"] == "tool" and choice.get("name") not in names:
        return f"tool_choice.name: tool {choice.get('name')!r} is not among the provided tools"
    return None


def _validate_thinking(body: dict[str, Any]) -> str | None:
    thinking = body.get("thinking")
    if thinking is None or thinking.get("type") == "disabled":
        return None
    if thinking.get("type") != "enabled":
        return "thinking: Input tag does not match any of the expected tags: 'enabled', 'disabled'"
    budget = thinking.get("budget_tokens")
    if not isinstance(budget, int) or budget < 1024:
        return "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
    if budget >= body["max_tokens"]:
        return "`max_tokens` must be greater than `thinking.budget_tokens`"
    if (body.get("tool_choice") or {}).get("type") in ("any", "tool"):
        return "Thinking may not be enabled when tool_choice forces tool use."
    return None


def _validate_messages(messages: Any) -> str | None:
    if not isinstance(messages, list):
        return "messages: Field required"
    if not messages:
        return "messages: at least one message is required"
    turns: list[tuple[str, list[dict[str, Any]], int]] = []  # role, blocks, index of first message
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            return f"messages.{i}: Input should be an object"
        role = msg.get("role")
        if role == "system":
            return (
                'messages: Unexpected role "system". The Messages API accepts a top-level `system` '
                'parameter, not "system" as an input message role.'
            )
        if role not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        content = msg.get("content")
        if content == "" or content == []:
            if i == len(messages) - 1 and role == "assistant":
                continue  # an empty final assistant turn (prefill) is allowed
            return (
                f"messages.{i}: all messages must have non-empty content except for the optional "
                "final assistant message"
            )
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(blocks, list):
            return f"messages.{i}.content: Input should be a valid list"
        for j, block in enumerate(blocks):
            problem = _validate_block(block, role, f"messages.{i}.content.{j}")
            if problem is not None:
                return problem
        # Consecutive turns of one role are combined into a single turn (documented).
        if turns and turns[-1][0] == role:
            turns[-1][1].extend(blocks)
        else:
            turns.append((role, list(blocks), i))
    return _validate_tool_pairing(turns)


def _validate_block(block: Any, role: str, where: str) -> str | None:
    if not isinstance(block, dict):
        return f"{where}: Input should be an object"
    kind = block.get("type")
    allowed = (
        ("text", "tool_use", "thinking", "redacted_thinking")
        if role == "assistant"
        else (
            "text",
            "image",
            "tool_result",
            "document",
        )
    )
    if kind not in allowed:
        return f"{where}.type: Input tag {kind!r} is not allowed in a {role} message"
    if kind == "text" and (not isinstance(block.get("text"), str) or not block["text"]):
        return "messages: text content blocks must be non-empty"
    if kind == "image":
        source = block.get("source") or {}
        if source.get("type") == "base64":
            if source.get("media_type") not in _MEDIA_TYPES:
                return (
                    f"{where}.source.base64.media_type: Input should be 'image/jpeg', 'image/png', "
                    "'image/gif' or 'image/webp'"
                )
            if not isinstance(source.get("data"), str) or not source["data"]:
                return f"{where}.source.base64.data: Field required"
        elif source.get("type") == "url":
            if not isinstance(source.get("url"), str):
                return f"{where}.source.url.url: Field required"
        else:
            return f"{where}.source: Input tag does not match any of the expected tags: 'base64', 'url'"
    if kind == "tool_use":
        if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
            return f"{where}: tool_use blocks need an id and a name"
        if not isinstance(block.get("input"), dict):
            return f"{where}.input: Input should be a valid dictionary"
    if kind == "tool_result" and not isinstance(block.get("tool_use_id"), str):
        return f"{where}.tool_use_id: Field required"
    if kind == "thinking":
        if not isinstance(block.get("signature"), str):
            return f"{where}.thinking.signature: Field required"
        if block["signature"] != sign(str(block.get("thinking"))):
            return f"{where}: Invalid `signature` in `thinking` block"
    if kind == "redacted_thinking" and not isinstance(block.get("data"), str):
        return f"{where}.redacted_thinking.data: Field required"
    return None


def _validate_tool_pairing(turns: list[tuple[str, list[dict[str, Any]], int]]) -> str | None:
    """Every tool_use answered in the next turn, tool results first, none answering nothing."""
    for t, (role, blocks, first) in enumerate(turns):
        if role == "assistant":
            asked = [b["id"] for b in blocks if b.get("type") == "tool_use"]
            if not asked or t + 1 == len(turns):
                continue
            answered = {b.get("tool_use_id") for b in turns[t + 1][1] if b.get("type") == "tool_result"}
            missing = [a for a in asked if a not in answered]
            if missing:
                return (
                    f"messages.{first}: `tool_use` ids were found without `tool_result` blocks immediately "
                    f"after: {', '.join(missing)}. Each `tool_use` block must have a corresponding "
                    "`tool_result` block in the next message."
                )
            continue
        previous = turns[t - 1][1] if t > 0 else []
        asked_before = {b.get("id") for b in previous if b.get("type") == "tool_use"}
        seen_other = False
        for j, block in enumerate(blocks):
            if block.get("type") != "tool_result":
                seen_other = True
                continue
            if seen_other:
                return f"messages.{first}.content.{j}: tool_result blocks must come first in the user message"
            if block["tool_use_id"] not in asked_before:
                return (
                    f"messages.{first}.content.{j}: unexpected `tool_use_id` found in `tool_result` blocks: "
                    f"{block['tool_use_id']}. Each `tool_result` block must have a corresponding "
                    "`tool_use` block in the previous message."
                )
    return None
