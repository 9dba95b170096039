"""A fake Cohere API v2: a real HTTP server on loopback that speaks ``/v2/chat`` and ``/v2/embed``.

Wire format followed (Cohere API reference):
- https://docs.cohere.com/reference/chat (request body: ``model``, ``messages`` with roles
  system/user/assistant/tool, user content a string or ``text`` / ``image_url`` parts, assistant
  ``tool_calls`` ``{id, type: function, function: {name, arguments}}`` and ``tool_plan``, tool
  messages with ``tool_call_id`` and ``content``; ``tools`` ``{type: function, function: {name,
  description?, parameters}}``; ``tool_choice`` REQUIRED / NONE; ``temperature``, ``p`` (0.01 to
  0.99), ``k`` (0 to 500), ``max_tokens``, ``stop_sequences`` (up to 5), ``seed``,
  ``response_format`` ``{type: text | json_object, json_schema?}``. The answer: ``{id,
  finish_reason, message: {role, content: [{type: text, text}], tool_plan?, tool_calls?}, usage:
  {billed_units: {input_tokens, output_tokens}, tokens: {input_tokens, output_tokens}}}``, counts
  written as numbers with a fraction (``37.0``) as Cohere writes them)
- https://docs.cohere.com/reference/chat-stream and
  https://docs.cohere.com/docs/tool-use-streaming (server-sent events ``event: TYPE`` +
  ``data: {"type": TYPE, ...}``: message-start, content-start, content-delta..., content-end, or
  for a tool-calling answer tool-plan-delta... then per call tool-call-start (id and name,
  ``arguments: ""``), tool-call-delta... (argument fragments), tool-call-end; then message-end
  with ``finish_reason`` and ``usage``; ``data: [DONE]`` last)
- https://docs.cohere.com/reference/embed (``{model, texts (1..96), input_type (required),
  embedding_types, output_dimension?, truncate?}`` -> ``{id, embeddings: {float: [[...]]},
  texts, meta: {api_version, billed_units: {input_tokens}}}``)
- https://docs.cohere.com/reference/errors (``{"message": ...}`` with 400, 401, 402, 404, 429,
  498, 499, 500, 503; a prompt over the window is a 400 "too many tokens: ...")

Refused as the API refuses them: a missing bearer token (401 "no api key supplied") or a wrong
one (401 "invalid api token"); a body that is not JSON; fields the API does not have (an OpenAI
field such as ``top_p``, ``stop`` or ``user`` sent as it is: "invalid request: unknown field");
a missing ``model``/``messages``; an unknown role; a tool message without ``tool_call_id``, or
answering no tool call of an earlier assistant turn; content parts other than text/image_url in
a user turn (text only elsewhere); an assistant tool call without id/name or with arguments that
are not a JSON object's text; tools without a ``parameters`` object; ``tool_choice`` other than
REQUIRED/NONE, or without ``tools``; ``p``, ``k``, ``temperature``, ``max_tokens``,
``stop_sequences`` out of range; an embed request without ``input_type``, with no texts or more
than 96.

Usage::

    with FakeCohere(api_key="co-test") as fake:
        fake.base_url                                    # "http://127.0.0.1:PORT" (no /v2)
        fake.set_behavior(Behavior(text="hi"), model="command-x")   # or the default behaviour
        fake.enqueue(Behavior(status=429, headers={"retry-after": "7"}))   # one-shot, in order
        fake.requests                                    # every request received (RecordedRequest)
        fake.wait_for_cancel(5.0)                        # a stream was abandoned by the client
"""

from __future__ import annotations

import asyncio
import hashlib
import struct
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

_CHAT_FIELDS = frozenset(
    {
        "model",
        "messages",
        "stream",
        "tools",
        "strict_tools",
        "documents",
        "citation_options",
        "response_format",
        "safety_mode",
        "max_tokens",
        "stop_sequences",
        "temperature",
        "seed",
        "frequency_penalty",
        "presence_penalty",
        "k",
        "p",
        "logprobs",
        "tool_choice",
        "thinking",
        "priority",
    }
)
_EMBED_FIELDS = frozenset(
    {
        "model",
        "texts",
        "images",
        "inputs",
        "input_type",
        "embedding_types",
        "output_dimension",
        "max_tokens",
        "truncate",
        "priority",
    }
)
_INPUT_TYPES = frozenset({"search_document", "search_query", "classification", "clustering", "image"})
_EMBEDDING_TYPES = frozenset({"float", "int8", "uint8", "binary", "ubinary", "base64"})
DIMENSIONS = 8


@dataclass
class Behavior:
    """How the fake answers one request."""

    status: int = 200
    error_message: str = "fake upstream error"
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # before the response starts
    text: str = "Hello from the fake Command model."
    tool_plan: str = "I will call the tools."  # sent with tool calls only
    # Tool calls to answer with: (id, name, arguments JSON text); finish_reason becomes TOOL_CALL.
    tool_calls: list[tuple[str, str, str]] = field(default_factory=list)
    finish_reason: str | None = None  # default: TOOL_CALL with tool_calls, else COMPLETE
    billed_input: int = 37
    billed_output: int = 12
    # Cohere's own token counts include its prompt template: larger than the billed ones.
    tokens_input: int = 913
    tokens_output: int = 40
    fragment: int = 5  # characters per content-delta / tool-plan-delta / tool-call-delta
    chunk_delay_s: float = 0.0  # between stream events
    stream_error: str | None = None  # message-end carries this ``error`` (finish_reason ERROR)
    end_without_message_end: bool = False  # end a stream cleanly, but before message-end

    def reason(self) -> str:
        return self.finish_reason or ("TOOL_CALL" if self.tool_calls else "COMPLETE")

    def usage(self) -> dict[str, Any]:
        return {
            "billed_units": {
                "input_tokens": float(self.billed_input),
                "output_tokens": float(self.billed_output),
            },
            "tokens": {"input_tokens": float(self.tokens_input), "output_tokens": float(self.tokens_output)},
        }

    def message(self) -> dict[str, Any]:
        if self.tool_calls:
            return {
                "role": "assistant",
                "tool_plan": self.tool_plan,
                "tool_calls": [
                    {"id": i, "type": "function", "function": {"name": n, "arguments": a}}
                    for i, n, a in self.tool_calls
                ],
            }
        return {"role": "assistant", "content": [{"type": "text", "text": self.text}]}


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


def vector_for(text: str, dimensions: int = DIMENSIONS) -> list[float]:
    """The fake's embedding of ``text``: deterministic, float32-exact (so base64 round-trips)."""
    digest = hashlib.sha256(text.encode()).digest()
    values = [(b - 128) / 128.0 for b in (digest * (dimensions // len(digest) + 1))[:dimensions]]
    return list(struct.unpack(f"<{dimensions}f", struct.pack(f"<{dimensions}f", *values)))


def embed_tokens(text: str) -> int:
    return len(text.split()) + 1


class FakeCohere:
    """The fake server; a context manager that runs it in a background thread."""

    def __init__(self, api_key: str = "co-fake-key", default: Behavior | None = None) -> None:
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
        """The API base to configure (``api_base``): the adapter appends ``/v2/chat``."""
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

    def start(self) -> FakeCohere:
        app = Starlette(
            routes=[
                Route("/v2/chat", self._chat, methods=["POST"]),
                Route("/v2/embed", self._embed, methods=["POST"]),
            ]
        )
        self._loopback = LoopbackServer(
            app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            loop="asyncio",
            http="h11",
            name="fake-cohere",
        )
        self.port = self._loopback.start()
        return self

    def stop(self) -> None:
        if self._loopback is not None:
            self._loopback.stop()

    def __enter__(self) -> FakeCohere:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ HTTP

    async def _read(self, request: Request) -> dict[str, Any] | Response:
        """The authenticated, recorded JSON body, or the error response the API gives instead."""
        auth = request.headers.get("authorization")
        if not auth:
            return _error(401, "no api key supplied")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or token != self.api_key:
            return _error(401, "invalid api token")
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _error(400, "invalid request: could not parse the request body as JSON")
        if not isinstance(body, dict):
            return _error(400, "invalid request: the request body must be a JSON object")
        with self._lock:
            self.requests.append(RecordedRequest(request.url.path, dict(request.headers), body))
        return body

    async def _chat(self, request: Request) -> Response:
        body = await self._read(request)
        if isinstance(body, Response):
            return body
        problem = validate_chat(body)
        if problem is not None:
            return _error(400, f"invalid request: {problem}")
        behavior = self._behavior_for(str(body["model"]))
        if behavior.delay_s and not await self._wait_unless_disconnected(request, behavior.delay_s):
            return Response(b"", 499)
        if behavior.status >= 400:
            return _error(behavior.status, behavior.error_message, behavior.headers)
        answer_id = str(uuid.uuid4())
        if body.get("stream"):
            return StreamingResponse(
                self._stream(answer_id, behavior),
                media_type="text/event-stream",
                headers={"cache-control": "no-cache", **behavior.headers},
            )
        answer = {
            "id": answer_id,
            "finish_reason": behavior.reason(),
            "message": behavior.message(),
            "usage": behavior.usage(),
        }
        return Response(orjson.dumps(answer), 200, headers=behavior.headers, media_type="application/json")

    async def _embed(self, request: Request) -> Response:
        body = await self._read(request)
        if isinstance(body, Response):
            return body
        problem = validate_embed(body)
        if problem is not None:
            return _error(400, f"invalid request: {problem}")
        behavior = self._behavior_for(str(body["model"]))
        if behavior.status >= 400:
            return _error(behavior.status, behavior.error_message, behavior.headers)
        texts = body["texts"]
        dims = body.get("output_dimension") or DIMENSIONS
        answer = {
            "id": str(uuid.uuid4()),
            "response_type": "embeddings_by_type",
            # Only float vectors are made here (the adapter asks for nothing else).
            "embeddings": {"float": [vector_for(t, dims) for t in texts]},
            "texts": texts,
            "meta": {
                "api_version": {"version": "2"},
                "billed_units": {"input_tokens": float(sum(embed_tokens(t) for t in texts))},
            },
        }
        return Response(orjson.dumps(answer), 200, media_type="application/json")

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

    async def _stream(self, answer_id: str, behavior: Behavior) -> AsyncIterator[bytes]:
        """The documented event sequence."""
        completed = False
        try:
            start = {"role": "assistant", "content": [], "tool_plan": "", "tool_calls": [], "citations": []}
            yield _event({"id": answer_id, "type": "message-start", "delta": {"message": start}})
            for event in _body_events(behavior):
                if behavior.chunk_delay_s:
                    await asyncio.sleep(behavior.chunk_delay_s)
                yield _event(event)
            completed = True
            if behavior.end_without_message_end:
                return
            end: dict[str, Any] = {"finish_reason": behavior.reason(), "usage": behavior.usage()}
            if behavior.stream_error is not None:
                end = {"finish_reason": "ERROR", "error": behavior.stream_error, "usage": behavior.usage()}
            yield _event({"type": "message-end", "delta": end})
            yield b"data: [DONE]\n\n"
        finally:
            if not completed:
                self._note_cancel()


def _body_events(behavior: Behavior) -> list[dict[str, Any]]:
    size = behavior.fragment
    if not behavior.tool_calls:
        events: list[dict[str, Any]] = [
            {
                "type": "content-start",
                "index": 0,
                "delta": {"message": {"content": {"type": "text", "text": ""}}},
            }
        ]
        for piece in _pieces(behavior.text, size):
            events.append(
                {"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": piece}}}}
            )
        events.append({"type": "content-end", "index": 0})
        return events
    events = [
        {"type": "tool-plan-delta", "delta": {"message": {"tool_plan": piece}}}
        for piece in _pieces(behavior.tool_plan, size)
    ]
    for index, (call_id, name, arguments) in enumerate(behavior.tool_calls):
        call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
        events.append({"type": "tool-call-start", "index": index, "delta": {"message": {"tool_calls": call}}})
        for piece in _pieces(arguments, size):
            fragment = {"function": {"arguments": piece}}
            events.append(
                {"type": "tool-call-delta", "index": index, "delta": {"message": {"tool_calls": fragment}}}
            )
        events.append({"type": "tool-call-end", "index": index})
    return events


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def _event(obj: dict[str, Any]) -> bytes:
    return b"event: " + str(obj["type"]).encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps({"id": str(uuid.uuid4()), "message": message}),
        status,
        headers=headers,
        media_type="application/json",
    )


# ---- validation, as the API answers -----------------------------------------------------------


def validate_chat(body: dict[str, Any]) -> str | None:
    """The API's 400 message for a ``/v2/chat`` body, or None when it would be accepted."""
    unknown = sorted(set(body) - _CHAT_FIELDS)
    if unknown:
        return f'unknown field: parameter "{unknown[0]}" is not a valid field'
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model is required"
    problem = _validate_params(body) or _validate_tools(body)
    if problem is None:
        problem = _validate_messages(body.get("messages"))
    return problem


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _validate_params(body: dict[str, Any]) -> str | None:
    if "stream" in body and not isinstance(body["stream"], bool):
        return "stream must be a boolean"
    if "max_tokens" in body and (not _is_int(body["max_tokens"]) or body["max_tokens"] < 1):
        return "max_tokens must be a positive integer"
    if "temperature" in body and (not _is_num(body["temperature"]) or body["temperature"] < 0):
        return "temperature must be a non-negative number"
    if "p" in body and (not _is_num(body["p"]) or not 0.01 <= body["p"] <= 0.99):
        return "p must be between 0.01 and 0.99"
    if "k" in body and (not _is_int(body["k"]) or not 0 <= body["k"] <= 500):
        return "k must be between 0 and 500"
    if "seed" in body and (not _is_int(body["seed"]) or body["seed"] < 0):
        return "seed must be a non-negative integer"
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            return "stop_sequences must be a list of strings"
        if len(stops) > 5:
            return "stop_sequences can have at most 5 items"
    fmt = body.get("response_format")
    if fmt is not None:
        if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object"):
            return "response_format.type must be one of text, json_object"
        if "json_schema" in fmt and not isinstance(fmt["json_schema"], dict):
            return "response_format.json_schema must be an object"
    return None


def _validate_tools(body: dict[str, Any]) -> str | None:
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            return "tools must be a list"
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict) or tool.get("type") != "function":
                return f"tools[{i}].type must be function"
            fn = tool.get("function")
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
                return f"tools[{i}].function.name is required"
            if not isinstance(fn.get("parameters"), dict):
                return f"tools[{i}].function.parameters is required"
            if set(fn) - {"name", "description", "parameters"}:
                return f"tools[{i}].function: unknown field"
    choice = body.get("tool_choice")
    if choice is not None:
        if choice not in ("REQUIRED", "NONE"):
            return "tool_choice must be one of REQUIRED, NONE"
        if not tools:
            return "tool_choice requires tools to be specified"
    return None


def _validate_messages(messages: Any) -> str | None:
    if not isinstance(messages, list) or not messages:
        return "messages is required and must not be empty"
    asked: set[str] = set()
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            return f"messages[{i}] must be an object"
        role = msg.get("role")
        if role == "user":
            problem = _validate_content(msg.get("content"), f"messages[{i}]", ("text", "image_url"))
        elif role == "system":
            problem = _validate_content(msg.get("content"), f"messages[{i}]", ("text",))
        elif role == "assistant":
            problem = _validate_assistant(msg, i, asked)
        elif role == "tool":
            problem = _validate_tool_message(msg, i, asked)
        else:
            return f"messages[{i}].role must be one of system, user, assistant, tool"
        if problem is not None:
            return problem
    return None


def _validate_content(content: Any, where: str, kinds: tuple[str, ...]) -> str | None:
    if isinstance(content, str):
        return None
    if not isinstance(content, list):
        return f"{where}.content is required"
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in kinds:
            return f"{where}.content[{j}].type must be one of {', '.join(kinds)}"
        if part["type"] == "text" and not isinstance(part.get("text"), str):
            return f"{where}.content[{j}].text is required"
        if part["type"] == "image_url":
            image = part.get("image_url")
            if not isinstance(image, dict) or not isinstance(image.get("url"), str):
                return f"{where}.content[{j}].image_url.url is required"
            url = image["url"]
            if not (url.startswith("data:image/") or url.startswith("https://") or url.startswith("http://")):
                return f"{where}.content[{j}].image_url.url must be a data URL or an http(s) URL"
    return None


def _validate_assistant(msg: dict[str, Any], i: int, asked: set[str]) -> str | None:
    if "content" in msg:
        problem = _validate_content(msg["content"], f"messages[{i}]", ("text", "thinking"))
        if problem is not None:
            return problem
    calls = msg.get("tool_calls")
    if calls is None:
        if "content" not in msg:
            return f"messages[{i}]: an assistant message needs content or tool_calls"
        return None
    if not isinstance(calls, list):
        return f"messages[{i}].tool_calls must be a list"
    for j, call in enumerate(calls):
        where = f"messages[{i}].tool_calls[{j}]"
        if (
            not isinstance(call, dict)
            or not isinstance(call.get("id"), str)
            or call.get("type") != "function"
        ):
            return f"{where} needs an id and type function"
        fn = call.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            return f"{where}.function.name is required"
        try:
            arguments = orjson.loads(fn.get("arguments") or "")
        except orjson.JSONDecodeError:
            arguments = None
        if not isinstance(arguments, dict):
            return f"{where}.function.arguments must be a JSON object"
        asked.add(call["id"])
    return None


def _validate_tool_message(msg: dict[str, Any], i: int, asked: set[str]) -> str | None:
    call_id = msg.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        return f"messages[{i}]: tool message must have a tool_call_id"
    if call_id not in asked:
        return f"messages[{i}]: tool_call_id {call_id} does not match any tool call"
    if "content" not in msg:
        return f"messages[{i}].content is required"
    return _validate_content(msg["content"], f"messages[{i}]", ("text", "document"))


def validate_embed(body: dict[str, Any]) -> str | None:
    """The API's 400 message for a ``/v2/embed`` body, or None when it would be accepted."""
    unknown = sorted(set(body) - _EMBED_FIELDS)
    if unknown:
        return f'unknown field: parameter "{unknown[0]}" is not a valid field'
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model is required"
    if body.get("input_type") not in _INPUT_TYPES:
        return "input_type is required and must be one of " + ", ".join(sorted(_INPUT_TYPES))
    texts = body.get("texts")
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        return "texts must be a non-empty list of strings"
    if len(texts) > 96:
        return "texts can have at most 96 items"
    kinds = body.get("embedding_types", ["float"])
    if not isinstance(kinds, list) or not kinds or not set(kinds) <= _EMBEDDING_TYPES:
        return "embedding_types must be a list of float, int8, uint8, binary, ubinary, base64"
    dims = body.get("output_dimension")
    if dims is not None and dims not in (256, 512, 1024, 1536):
        return "output_dimension must be one of 256, 512, 1024, 1536"
    return None
