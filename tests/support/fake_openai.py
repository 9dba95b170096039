"""A fake OpenAI upstream: a real HTTP server on loopback that speaks the chat-completions wire format.

Wire format followed (OpenAI API reference):
- https://platform.openai.com/docs/api-reference/chat/create  (request and ``chat.completion`` object)
- https://platform.openai.com/docs/api-reference/chat/streaming (``chat.completion.chunk`` objects sent
  as server-sent events ``data: {...}\\n\\n``, ending with ``data: [DONE]\\n\\n``; with
  ``stream_options.include_usage`` every chunk carries ``"usage": null`` and one last chunk with
  ``"choices": []`` carries the usage)
- https://platform.openai.com/docs/api-reference/embeddings/create (``/v1/embeddings``: ``input`` a
  string, strings, token ids or arrays of them, never empty; ``encoding_format`` float or base64 (the
  float32 little-endian bytes, base64-encoded); ``dimensions``; usage has prompt and total tokens)
- https://platform.openai.com/docs/api-reference/completions/create (``/v1/completions``:
  ``text_completion`` objects, streamed as chunks of the same object ending with ``[DONE]``)
- https://platform.openai.com/docs/guides/error-codes (errors: ``{"error": {"message", "type",
  "param", "code"}}``)

Usage (any team)::

    with FakeOpenAI() as fake:                    # uvicorn in a background thread, port 0
        fake.base_url                             # "http://127.0.0.1:PORT/v1"
        fake.set_behavior(Behavior(chunks=20))     # default behaviour, or per model: model="gpt-x"
        fake.enqueue(Behavior(status=429))         # one-shot behaviours, used first, in order
        fake.requests                              # every request received (RecordedRequest)
        fake.cancelled                             # requests the client abandoned (mid-stream or while
                                                  # waiting out Behavior.delay_s)
        fake.wait_for_cancel(5.0)                  # block until a stream was abandoned

The reply text is deterministic: ``Behavior.content`` (or "chunk0 chunk1 ..."), split into
``chunks`` stream deltas; usage reports ``prompt_tokens`` and ``completion_tokens = chunks``.
"""

from __future__ import annotations

import asyncio
import base64
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


@dataclass
class Behavior:
    """How the fake answers one request."""

    status: int = 200
    error_message: str = "fake upstream error"
    error_type: str = "server_error"
    error_code: str | None = None
    raw_body: bytes | None = None  # reply with exactly these bytes (and ``status``)
    delay_s: float = 0.0  # before the response starts
    chunks: int = 3  # content deltas in a stream
    chunk_delay_s: float = 0.0  # between stream events
    content: str | None = None
    prompt_tokens: int = 7
    headers: dict[str, str] = field(default_factory=dict)
    fail_after_chunks: int | None = None  # drop the connection after this many content deltas
    # Tool calls to answer with, (id, name, arguments JSON text), after any content; finish_reason
    # becomes "tool_calls". Streamed as OpenAI does: the first piece of each call carries its id
    # and name, then its arguments in three fragments, one call after another.
    tool_calls: list[tuple[str, str, str]] = field(default_factory=list)

    def pieces(self) -> list[str]:
        if self.content is None:
            return [f"chunk{i} " for i in range(self.chunks)]
        n = max(1, self.chunks)
        size = max(1, -(-len(self.content) // n))
        return [self.content[i : i + size] for i in range(0, len(self.content), size)] or [""]

    def text(self) -> str:
        return "".join(self.pieces())


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    received_at: float


class _Dropped(Exception):
    pass


class FakeOpenAI:
    """The fake server; a context manager that runs it in a background thread."""

    def __init__(
        self,
        default: Behavior | None = None,
        *,
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
    ) -> None:
        self.ssl_certfile = ssl_certfile
        self.ssl_keyfile = ssl_keyfile
        self.default = default or Behavior()
        self.by_model: dict[str, Behavior] = {}
        self.queue: deque[Behavior] = deque()
        self.requests: list[RecordedRequest] = []
        self.cancelled = 0
        self.completed_streams = 0
        self._cancel_event = threading.Event()
        self._lock = threading.Lock()
        self._loopback: LoopbackServer | None = None
        self.port = 0

    # ------------------------------------------------------------------ control

    @property
    def base_url(self) -> str:
        """The API base to configure (``api_base``), including ``/v1``."""
        scheme = "https" if self.ssl_certfile else "http"
        return f"{scheme}://127.0.0.1:{self.port}/v1"

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
            self.completed_streams = 0
            self._cancel_event.clear()

    def wait_for_cancel(self, timeout: float) -> bool:
        return self._cancel_event.wait(timeout)

    def _behavior_for(self, model: str) -> Behavior:
        with self._lock:
            if self.queue:
                return self.queue.popleft()
            return self.by_model.get(model, self.default)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeOpenAI:
        self._loopback = LoopbackServer(
            self.app(),
            log_level="warning",
            access_log=False,
            lifespan="off",
            loop="asyncio",
            http="h11",
            ssl_certfile=self.ssl_certfile,
            ssl_keyfile=self.ssl_keyfile,
            name="fake-openai",
        )
        self.port = self._loopback.start()
        return self

    def stop(self) -> None:
        if self._loopback is not None:
            self._loopback.stop()

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ HTTP

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/embeddings", self._embeddings, methods=["POST"]),
                Route("/v1/completions", self._completions, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
            ]
        )

    async def _models(self, request: Request) -> Response:
        return _json(
            {"object": "list", "data": [{"id": "fake-model", "object": "model", "owned_by": "fake"}]}
        )

    async def _chat(self, request: Request) -> Response:
        raw = await request.body()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return _json(_error("invalid JSON body", "invalid_request_error", None), 400)
        with self._lock:
            self.requests.append(RecordedRequest(request.url.path, dict(request.headers), body, time.time()))
        model = str(body.get("model", ""))
        behavior = self._behavior_for(model)
        if behavior.delay_s and not await self._wait_unless_disconnected(request, behavior.delay_s):
            return Response(b"", 499)  # nobody is listening any more
        if behavior.raw_body is not None:
            return Response(behavior.raw_body, behavior.status, headers=behavior.headers)
        if behavior.status >= 400:
            err = _error(behavior.error_message, behavior.error_type, behavior.error_code)
            return _json(err, behavior.status, behavior.headers)
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(
                self._stream(model, behavior, include_usage),
                media_type="text/event-stream",
                headers=behavior.headers,
            )
        text = behavior.text()
        completion = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_fake",
            "choices": [
                {
                    "index": 0,
                    "message": _message(text, behavior.tool_calls),
                    "logprobs": None,
                    "finish_reason": "tool_calls" if behavior.tool_calls else "stop",
                }
            ],
            "usage": _usage(behavior),
        }
        return _json(completion, 200, behavior.headers)

    async def _read(self, request: Request) -> tuple[dict[str, Any] | None, Behavior | Response]:
        """The JSON body (recorded) and the behaviour to follow, or the response to give at once."""
        raw = await request.body()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None, _json(_error("invalid JSON body", "invalid_request_error", None), 400)
        with self._lock:
            self.requests.append(RecordedRequest(request.url.path, dict(request.headers), body, time.time()))
        behavior = self._behavior_for(str(body.get("model", "")))
        if behavior.raw_body is not None:
            return body, Response(behavior.raw_body, behavior.status, headers=behavior.headers)
        if behavior.status >= 400:
            err = _error(behavior.error_message, behavior.error_type, behavior.error_code)
            return body, _json(err, behavior.status, behavior.headers)
        return body, behavior

    async def _embeddings(self, request: Request) -> Response:
        body, behavior = await self._read(request)
        if isinstance(behavior, Response):
            return behavior
        assert body is not None
        inputs = body.get("input")
        if isinstance(inputs, str) or (isinstance(inputs, list) and inputs and type(inputs[0]) is int):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs or any(i in ("", []) for i in inputs):
            return _json(_invalid("'input' must not be empty", "input"), 400)
        fmt = body.get("encoding_format", "float")
        if fmt not in ("float", "base64"):
            return _json(_invalid("'encoding_format' must be 'float' or 'base64'", "encoding_format"), 400)
        dims = body.get("dimensions") or EMBEDDING_DIMENSIONS
        data = []
        tokens = 0
        for index, item in enumerate(inputs):
            tokens += len(item.split()) if isinstance(item, str) else len(item)
            vector = fake_embedding(item, dims)
            value: Any = vector
            if fmt == "base64":
                value = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": value})
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return _json({"object": "list", "data": data, "model": body.get("model"), "usage": usage})

    async def _completions(self, request: Request) -> Response:
        body, behavior = await self._read(request)
        if isinstance(behavior, Response):
            return behavior
        assert body is not None
        if "prompt" not in body:
            return _json(_invalid("you must provide a 'prompt'", "prompt"), 400)
        model = str(body.get("model", ""))
        cid = f"cmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())

        def choice(text: str, finish: str | None) -> dict[str, Any]:
            return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}

        def obj(choices: list[dict[str, Any]], usage: Any = None) -> dict[str, Any]:
            out = {"id": cid, "object": "text_completion", "created": created, "model": model}
            out["choices"] = choices
            if usage is not None:
                out["usage"] = usage
            return out

        if not body.get("stream"):
            return _json(obj([choice(behavior.text(), "stop")], _usage(behavior)))
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def events() -> AsyncIterator[bytes]:
            pieces = behavior.pieces()
            for i, piece in enumerate(pieces):
                finish = "stop" if i == len(pieces) - 1 else None
                yield b"data: " + orjson.dumps(obj([choice(piece, finish)])) + b"\n\n"
            if include_usage:
                yield b"data: " + orjson.dumps(obj([], _usage(behavior))) + b"\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def _wait_unless_disconnected(self, request: Request, delay: float) -> bool:
        """Sleep ``delay`` seconds; False (and the request counts as cancelled) if the client left."""
        deadline = time.monotonic() + delay
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(0.02, left))
            if await request.is_disconnected():
                with self._lock:
                    self.cancelled += 1
                    self._cancel_event.set()
                return False
        return True

    async def _stream(self, model: str, behavior: Behavior, include_usage: bool) -> AsyncIterator[bytes]:
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
            obj: dict[str, Any] = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_fake",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }
            if include_usage:
                obj["usage"] = None
            return b"data: " + orjson.dumps(obj) + b"\n\n"

        completed = False
        try:
            yield chunk({"role": "assistant", "content": ""}, None)
            for i, piece in enumerate(behavior.pieces()):
                if behavior.fail_after_chunks is not None and i >= behavior.fail_after_chunks:
                    raise _Dropped()
                if behavior.chunk_delay_s:
                    await asyncio.sleep(behavior.chunk_delay_s)
                yield chunk({"content": piece}, None)
            for index, (call_id, name, arguments) in enumerate(behavior.tool_calls):
                head = {"index": index, "id": call_id, "type": "function"}
                yield chunk({"tool_calls": [{**head, "function": {"name": name, "arguments": ""}}]}, None)
                third = -(-len(arguments) // 3) or 1
                for start in range(0, len(arguments), third):
                    fragment = {"index": index, "function": {"arguments": arguments[start : start + third]}}
                    yield chunk({"tool_calls": [fragment]}, None)
            yield chunk({}, "tool_calls" if behavior.tool_calls else "stop")
            if include_usage:
                usage_chunk = {
                    "id": cid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "system_fingerprint": "fp_fake",
                    "choices": [],
                    "usage": _usage(behavior),
                }
                yield b"data: " + orjson.dumps(usage_chunk) + b"\n\n"
            yield b"data: [DONE]\n\n"
            completed = True
        finally:
            with self._lock:
                if completed:
                    self.completed_streams += 1
                elif behavior.fail_after_chunks is None:
                    self.cancelled += 1
                    self._cancel_event.set()


def _message(text: str, tool_calls: list[tuple[str, str, str]]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
    if tool_calls:
        message["content"] = text or None
        message["tool_calls"] = [
            {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}
            for cid, name, args in tool_calls
        ]
    return message


def _usage(behavior: Behavior) -> dict[str, int]:
    completion = len(behavior.pieces())
    return {
        "prompt_tokens": behavior.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": behavior.prompt_tokens + completion,
    }


# The fake's embedding size when ``dimensions`` is not given (small: tests compare whole vectors).
EMBEDDING_DIMENSIONS = 8


def fake_embedding(item: str | list[int], dims: int) -> list[float]:
    """A deterministic vector for ``item``: float32-exact values, so base64 round-trips exactly."""
    seed = hashlib.sha256(orjson.dumps(item)).digest()
    return [((seed[i % len(seed)] - 128) / 128.0) for i in range(dims)]


def _invalid(message: str, param: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}}


def _error(message: str, type_: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def _json(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(obj), status, headers=headers, media_type="application/json")
