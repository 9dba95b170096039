"""A fake Ollama server: a real HTTP server on loopback that speaks Ollama's native API.

Wire format followed: https://github.com/ollama/ollama/blob/main/docs/api.md
- ``POST /api/chat``: ``{model, messages, tools?, format?, options?, stream (default true), think?,
  keep_alive?}``; a message is ``{role: system|user|assistant|tool, content, images?, tool_calls?,
  tool_name?}``, ``images`` bare base64 strings, a tool call ``{"function": {"name", "arguments":
  <object>}}``. Streams are newline-delimited JSON (``application/x-ndjson``): ``{model,
  created_at, message: {role, content}, done: false}`` per piece, a tool call whole in one line,
  and a last line ``done: true`` with ``done_reason``, ``total_duration``, ``load_duration``,
  ``prompt_eval_count``, ``prompt_eval_duration``, ``eval_count``, ``eval_duration``. Unstreamed:
  that last object with the whole ``message``.
- ``POST /api/embed``: ``{model, input: string | [string], truncate?, dimensions?, options?,
  keep_alive?}`` -> ``{model, embeddings, total_duration, load_duration, prompt_eval_count}``.
- Errors are ``{"error": "<text>"}``: 400 for a body that is not JSON or breaks the format (no
  ``model``, a role Ollama does not know, ``images`` that are not base64, tool-call ``arguments``
  that are not an object, ``format`` neither "json" nor a schema, ``options`` not an object,
  ``tools`` for a model without tool support); 404 ``model "x" not found, try pulling it first``
  for a model not pulled; a failure after a stream started is one ``{"error": ...}`` line.

Usage::

    with FakeOllama(models={"llama3.2": {"tools", "vision"}, "all-minilm": {"embedding"}}) as fake:
        fake.base_url                                # "http://127.0.0.1:PORT"
        fake.set_behavior(Behavior(text="hi"))       # or per model: model="llama3.2"
        fake.enqueue(Behavior(status=500, error="runner died"))   # one-shot, in order
        fake.requests                                # every request received (RecordedRequest)
        fake.wait_for_cancel(5.0)                    # a stream was abandoned by the client
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tests.support.loopback_server import LoopbackServer

_ROLES = frozenset({"system", "user", "assistant", "tool"})
EMBEDDING_DIMENSIONS = 6


@dataclass
class Behavior:
    """How the fake answers one request."""

    status: int = 200
    error: str = "fake ollama error"
    delay_s: float = 0.0  # before the response starts
    text: str = "Hello from the fake llama."
    thinking: str | None = None
    # Tool calls after the text: (name, arguments object), each sent whole in one stream line.
    tool_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    done_reason: str = "stop"
    prompt_eval_count: int = 26
    fragment: int = 6  # characters per streamed content line
    chunk_delay_s: float = 0.0
    error_after_lines: int | None = None  # streams: an {"error": ...} line after that many lines
    end_without_done: bool = False  # end a stream cleanly, but before the done line

    def pieces(self, text: str) -> list[str]:
        return [text[i : i + self.fragment] for i in range(0, len(text), self.fragment)]

    def eval_count(self) -> int:
        # One "token" per streamed piece plus one per tool call: what the final line reports.
        return len(self.pieces(self.text)) + len(self.pieces(self.thinking or "")) + len(self.tool_calls)


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class FakeOllama:
    """The fake server; a context manager that runs it in a background thread."""

    def __init__(self, models: Mapping[str, set[str]] | None = None) -> None:
        # Pulled models and what each can do ("tools", "vision", "embedding").
        self.models = dict(models or {"llama3.2": {"tools", "vision"}, "all-minilm": {"embedding"}})
        self.default = Behavior()
        self.by_model: dict[str, Behavior] = {}
        self.queue: deque[Behavior] = deque()
        self.requests: list[RecordedRequest] = []
        self.cancelled = 0
        self._cancel_event = threading.Event()
        self._lock = threading.Lock()
        self._loopback: LoopbackServer | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
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

    def _behavior_for(self, model: str) -> Behavior:
        with self._lock:
            if self.queue:
                return self.queue.popleft()
            return self.by_model.get(model, self.default)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeOllama:
        app = Starlette(
            routes=[
                Route("/api/chat", self._chat, methods=["POST"]),
                Route("/api/embed", self._embed, methods=["POST"]),
            ]
        )
        self._loopback = LoopbackServer(
            app, log_level="warning", access_log=False, lifespan="off", http="h11", name="fake-ollama"
        )
        self.port = self._loopback.start()
        return self

    def stop(self) -> None:
        if self._loopback is not None:
            self._loopback.stop()

    def __enter__(self) -> FakeOllama:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ HTTP

    async def _read(self, request: Request) -> dict[str, Any] | Response:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _error(400, "invalid character in request body")
        if not isinstance(body, dict):
            return _error(400, "json: cannot unmarshal array into Go value of type api.ChatRequest")
        with self._lock:
            self.requests.append(RecordedRequest(request.url.path, dict(request.headers), body))
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return _error(400, "model is required")
        if model not in self.models:
            return _error(404, f'model "{model}" not found, try pulling it first')
        return body

    async def _chat(self, request: Request) -> Response:
        body = await self._read(request)
        if isinstance(body, Response):
            return body
        problem = _validate_chat(body, self.models[body["model"]])
        if problem is not None:
            return _error(400, problem)
        behavior = self._behavior_for(body["model"])
        if behavior.delay_s and not await self._wait_unless_disconnected(request, behavior.delay_s):
            return Response(b"", 499)
        if behavior.status >= 400:
            return _error(behavior.status, behavior.error)
        if body.get("stream", True):
            return StreamingResponse(self._stream(body["model"], behavior), media_type="application/x-ndjson")
        message: dict[str, Any] = {"role": "assistant", "content": behavior.text}
        if behavior.thinking is not None:
            message["thinking"] = behavior.thinking
        if behavior.tool_calls:
            message["tool_calls"] = _tool_calls(behavior)
        return _json(_final(body["model"], behavior, message))

    async def _stream(self, model: str, behavior: Behavior) -> AsyncIterator[bytes]:
        lines: list[dict[str, Any]] = []
        for piece in behavior.pieces(behavior.thinking or ""):
            lines.append({"role": "assistant", "content": "", "thinking": piece})
        for piece in behavior.pieces(behavior.text):
            lines.append({"role": "assistant", "content": piece})
        for call in _tool_calls(behavior):
            lines.append({"role": "assistant", "content": "", "tool_calls": [call]})
        completed = False
        try:
            for i, message in enumerate(lines):
                if behavior.error_after_lines is not None and i >= behavior.error_after_lines:
                    yield orjson.dumps({"error": behavior.error}) + b"\n"
                    completed = True
                    return
                if behavior.chunk_delay_s:
                    await asyncio.sleep(behavior.chunk_delay_s)
                yield (
                    orjson.dumps({"model": model, "created_at": _now(), "message": message, "done": False})
                    + b"\n"
                )
            if not behavior.end_without_done:
                yield orjson.dumps(_final(model, behavior, {"role": "assistant", "content": ""})) + b"\n"
            completed = True
        finally:
            if not completed:
                self._note_cancel()

    async def _embed(self, request: Request) -> Response:
        body = await self._read(request)
        if isinstance(body, Response):
            return body
        raw = body.get("input")
        inputs = [raw] if isinstance(raw, str) else raw
        if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
            return _error(400, "invalid input type")
        behavior = self._behavior_for(body["model"])
        if behavior.status >= 400:
            return _error(behavior.status, behavior.error)
        dims = body.get("dimensions") or EMBEDDING_DIMENSIONS
        vectors = [fake_embedding(text, dims) for text in inputs]
        tokens = sum(len(text.split()) for text in inputs)
        return _json(
            {
                "model": body["model"],
                "embeddings": vectors,
                "total_duration": 14143917,
                "load_duration": 1019500,
                "prompt_eval_count": tokens,
            }
        )

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


def fake_embedding(text: str, dims: int) -> list[float]:
    """A deterministic vector for ``text``, float32-exact so base64 encodings round-trip."""
    seed = hashlib.sha256(text.encode()).digest()
    return [(seed[i % len(seed)] - 128) / 128.0 for i in range(dims)]


def _validate_chat(body: dict[str, Any], capabilities: set[str]) -> str | None:
    messages = body.get("messages", [])
    if not isinstance(messages, list):
        return (
            "json: cannot unmarshal messages into Go struct field ChatRequest.messages of type []api.Message"
        )
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in _ROLES:
            return f"invalid role in messages[{i}]"
        if not isinstance(msg.get("content", ""), str):
            return "json: cannot unmarshal array into Go struct field Message.messages.content of type string"
        for image in msg.get("images") or []:
            try:
                base64.b64decode(image, validate=True)
            except (binascii.Error, TypeError, ValueError):
                return "illegal base64 data at input byte 0"
        if msg.get("images") and "vision" not in capabilities:
            return f"{body['model']} does not support images"
        for call in msg.get("tool_calls") or []:
            fn = call.get("function") if isinstance(call, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("arguments", {}), dict):
                return (
                    "json: cannot unmarshal string into Go struct field ToolCallFunction."
                    "messages.tool_calls.function.arguments of type api.ToolCallFunctionArguments"
                )
    if body.get("tools") and "tools" not in capabilities:
        return f"registry.ollama.ai/library/{body['model']} does not support tools"
    for tool in body.get("tools") or []:
        if (
            not isinstance(tool, dict)
            or tool.get("type") != "function"
            or not isinstance(tool.get("function"), dict)
        ):
            return "invalid tool definition"
    fmt = body.get("format")
    if fmt is not None and fmt != "json" and fmt != "" and not isinstance(fmt, dict):
        return f'invalid format: "{fmt}"; expected "json" or a valid JSON Schema'
    if "options" in body and not isinstance(body["options"], dict):
        return (
            "json: cannot unmarshal options into Go struct field ChatRequest.options "
            "of type map[string]interface {}"
        )
    return None


def _tool_calls(behavior: Behavior) -> list[dict[str, Any]]:
    return [{"function": {"name": name, "arguments": args}} for name, args in behavior.tool_calls]


def _final(model: str, behavior: Behavior, message: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": model,
        "created_at": _now(),
        "message": message,
        "done_reason": behavior.done_reason,
        "done": True,
        "total_duration": 4883583458,
        "load_duration": 1334875,
        "prompt_eval_count": behavior.prompt_eval_count,
        "prompt_eval_duration": 342546000,
        "eval_count": behavior.eval_count(),
        "eval_duration": 4535599000,
    }


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _error(status: int, message: str) -> Response:
    return _json({"error": message}, status)


def _json(obj: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(obj), status, media_type="application/json; charset=utf-8")
