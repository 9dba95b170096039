"""A fake OpenAI-compatible upstream that misbehaves on script.

A real HTTP/1.1 server on loopback (raw asyncio in a background thread, so it can also cut a
connection mid-stream, which a framework server would not let us do). Each chat request takes
the next scripted ``Behaviour`` (or the default one): answer normally, answer slowly, return
an error status (500, 429 with Retry-After, context-length or content-policy errors), hang
without answering, or stream a few chunks and then reset the connection. Faults for hostile-path
tests: drop the connection without a response, answer with raw bytes (malformed JSON, a body
that is not what its Content-Encoding says), end a stream cleanly but without ``[DONE]``, stall
a stream (silently, or with keep-alive comments), garble a stream event, and echo the
credentials the request carried back in an error (plain, or as a stream error event). Every
request is recorded so tests can count upstream hits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Behaviour:
    """What to do with one chat request."""

    kind: str = "ok"  # ok | error | hang | reset | drop | raw | echo | truncate | stall | garble
    delay: float = 0.0  # before the first byte (ok / error / reset)
    chunk_delay: float = 0.0  # between stream chunks
    status: int = 200
    error: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    content: str | None = None  # default: the upstream's name
    chunks_before_reset: int = 1  # reset, and stream chunks sent before echo / truncate / stall / garble
    raw_body: bytes = b""  # raw
    keepalive: float | None = None  # stall: send an SSE comment this often instead of silence
    text_body: bool = False  # echo: a text/plain body instead of an OpenAI-shaped error


def ok(content: str | None = None, *, delay: float = 0.0, chunk_delay: float = 0.0) -> Behaviour:
    return Behaviour("ok", delay=delay, chunk_delay=chunk_delay, content=content)


def error(
    status: int,
    message: str = "upstream failure",
    *,
    type: str = "server_error",
    code: str | None = None,
    headers: dict[str, str] | None = None,
    delay: float = 0.0,
) -> Behaviour:
    body = {"message": message, "type": type, "param": None, "code": code}
    return Behaviour("error", status=status, error=body, headers=headers or {}, delay=delay)


def server_error(message: str = "internal error") -> Behaviour:
    return error(500, message)


def rate_limited(retry_after: float | None = None) -> Behaviour:
    headers = {} if retry_after is None else {"retry-after": f"{retry_after:g}"}
    return error(429, "Rate limit reached", type="requests", code="rate_limit_exceeded", headers=headers)


def context_length() -> Behaviour:
    return error(
        400,
        "This model's maximum context length is 8 tokens. However, your messages resulted in 99 tokens.",
        type="invalid_request_error",
        code="context_length_exceeded",
    )


def content_policy() -> Behaviour:
    return error(
        400,
        "Your request was rejected as a result of our safety system.",
        type="invalid_request_error",
        code="content_policy_violation",
    )


def bad_request(message: str = "Invalid value for 'temperature'.") -> Behaviour:
    return error(400, message, type="invalid_request_error", code="invalid_value")


def hang() -> Behaviour:
    return Behaviour("hang")


def reset_mid_stream(chunks_before_reset: int = 1) -> Behaviour:
    return Behaviour("reset", chunks_before_reset=chunks_before_reset)


def drop() -> Behaviour:
    """Read the request, then close the connection without any response."""
    return Behaviour("drop")


def raw(status: int, body: bytes, headers: dict[str, str] | None = None) -> Behaviour:
    """Answer with exactly ``body`` (malformed JSON, a bogus Content-Encoding...)."""
    return Behaviour("raw", status=status, raw_body=body, headers=headers or {})


def echo_credentials(
    status: int = 401, *, mid_stream: int | None = None, text_body: bool = False
) -> Behaviour:
    """An error that echoes the request's credential headers back (Authorization, x-api-key).

    Also in the error's ``code`` and ``param``. For a stream request with ``mid_stream=N``, the
    error comes as an SSE ``data: {"error": ...}`` event after N chunks of a 200 stream.
    """
    chunks = mid_stream if mid_stream is not None else -1
    return Behaviour("echo", status=status, chunks_before_reset=chunks, text_body=text_body)


def truncated_stream(chunks: int = 2) -> Behaviour:
    """Send ``chunks`` stream chunks, then end the body cleanly, without ``[DONE]``."""
    return Behaviour("truncate", chunks_before_reset=chunks)


def stalled_stream(chunks: int = 2, keepalive: float | None = None) -> Behaviour:
    """Send ``chunks`` stream chunks, then nothing (or only keep-alive comments) until the client leaves."""
    return Behaviour("stall", chunks_before_reset=chunks, keepalive=keepalive)


def garbled_stream(chunks: int = 1) -> Behaviour:
    """Send ``chunks`` stream chunks, then an event whose JSON is cut short, then carry on."""
    return Behaviour("garble", chunks_before_reset=chunks)


@dataclass(slots=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None
    at: float


class MisbehavingUpstream:
    """One fake upstream. Use as a context manager (sync); ``url`` is its ``/v1`` API base."""

    def __init__(self, name: str = "upstream", default: Behaviour | None = None) -> None:
        self.name = name
        self.default = default or ok()
        self._script: deque[Behaviour] = deque()
        self._lock = threading.Lock()
        self.requests: list[RecordedRequest] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self.port = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self.models_behaviour: Behaviour | None = None  # GET /models (what /health probes); None: 200

    # ---- scripting ---------------------------------------------------------------------

    def script(self, *behaviours: Behaviour) -> MisbehavingUpstream:
        """Queue behaviours for the next chat requests, in order (then the default applies)."""
        with self._lock:
            self._script.extend(behaviours)
        return self

    def set_default(self, behaviour: Behaviour) -> None:
        with self._lock:
            self.default = behaviour

    def reset(self) -> None:
        with self._lock:
            self._script.clear()
            self.requests.clear()

    @property
    def chat_hits(self) -> int:
        """Chat-completion requests received so far."""
        with self._lock:
            return sum(1 for r in self.requests if r.path.endswith("/chat/completions"))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _next(self) -> Behaviour:
        with self._lock:
            return self._script.popleft() if self._script else self.default

    # ---- lifecycle -----------------------------------------------------------------------

    def start(self) -> MisbehavingUpstream:
        self._thread = threading.Thread(target=self._run, name=f"upstream-{self.name}", daemon=True)
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("misbehaving upstream did not start")
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return
        loop.call_soon_threadsafe(self._shutdown)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = None

    def __enter__(self) -> MisbehavingUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)

        async def main() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]
            self._started.set()

        loop.run_until_complete(main())
        loop.run_forever()
        # Drain cancelled handlers so the loop closes cleanly.
        pending = asyncio.all_tasks(loop)
        for t in pending:
            t.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()

    def _shutdown(self) -> None:
        assert self._loop is not None
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        self._loop.stop()

    # ---- HTTP ----------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                length = int(headers.get("content-length", "0") or 0)
                raw = await reader.readexactly(length) if length else b""
                body = json.loads(raw) if raw else None
                with self._lock:
                    self.requests.append(RecordedRequest(method, path, headers, body, time.time()))
                if path.rstrip("/").endswith("/models") and method == "GET":
                    if self.models_behaviour is not None and self.models_behaviour.kind == "echo":
                        await self._echo(writer, self.models_behaviour, headers)
                        continue
                    await self._send_json(
                        writer, 200, {"object": "list", "data": [{"id": "m", "object": "model"}]}
                    )
                    continue
                if not path.endswith("/chat/completions"):
                    await self._send_json(writer, 404, {"error": {"message": "not found", "type": "x"}})
                    continue
                keep = await self._chat(reader, writer, body or {}, headers)
                if not keep:
                    return
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            self._writers.discard(writer)
            if not writer.transport.is_closing():
                writer.close()

    async def _send_json(
        self, writer: asyncio.StreamWriter, status: int, obj: Any, headers: dict[str, str] | None = None
    ) -> None:
        payload = json.dumps(obj).encode()
        head = [f"HTTP/1.1 {status} X", "content-type: application/json", f"content-length: {len(payload)}"]
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
        await writer.drain()

    async def _echo(self, writer: asyncio.StreamWriter, b: Behaviour, headers: dict[str, str]) -> None:
        """Answer with an error that repeats the credentials the request carried."""
        auth = headers.get("authorization", "")
        token = auth.partition(" ")[2]
        message = f"Invalid credentials. Authorization: {auth}; x-api-key: {headers.get('x-api-key', '')}"
        if b.text_body:
            payload = f"{message}\nheaders: {headers}".encode()
            head = [f"HTTP/1.1 {b.status} X", "content-type: text/plain", f"content-length: {len(payload)}"]
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
            await writer.drain()
            return
        error = {"message": message, "type": f"auth_error {token}", "param": auth, "code": token}
        await self._send_json(writer, b.status, {"error": error})

    async def _chat(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        body: dict[str, Any],
        headers: dict[str, str],
    ) -> bool:
        b = self._next()
        if b.kind == "hang":
            # Hold the connection without answering until the client gives up.
            await reader.read()
            return False
        if b.kind == "drop":
            writer.transport.abort()
            return False
        if b.delay:
            await asyncio.sleep(b.delay)
        if b.kind == "error":
            await self._send_json(writer, b.status, {"error": b.error}, b.headers)
            return True
        if b.kind == "raw":
            head = [f"HTTP/1.1 {b.status} X", f"content-length: {len(b.raw_body)}"]
            head += [f"{k}: {v}" for k, v in b.headers.items()]
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + b.raw_body)
            await writer.drain()
            return True
        if b.kind == "echo" and (b.chunks_before_reset < 0 or not body.get("stream")):
            await self._echo(writer, b, headers)
            return True
        content = b.content if b.content is not None else self.name
        model = body.get("model", "m")
        usage = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
        if not body.get("stream"):
            await self._send_json(
                writer,
                200,
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": content},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                },
            )
            return True
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        )

        def chunk(
            delta: dict[str, Any], finish: str | None = None, use: dict[str, Any] | None = None
        ) -> bytes:
            obj: dict[str, Any] = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": [] if use else [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            if use:
                obj["usage"] = use
            data = b"data: " + json.dumps(obj).encode() + b"\n\n"
            return f"{len(data):x}\r\n".encode() + data + b"\r\n"

        pieces = [chunk({"role": "assistant", "content": ""})]
        pieces += [chunk({"content": part}) for part in _split(content)]
        if b.kind in ("echo", "truncate", "stall", "garble"):
            for p in pieces[: b.chunks_before_reset]:
                writer.write(p)
                await writer.drain()
            if b.kind == "echo":
                auth = headers.get("authorization", "")
                token = auth.partition(" ")[2]
                error = {
                    "message": f"upstream saw Authorization: {auth}",
                    "type": "server_error",
                    "code": token,
                }
                event = b"data: " + json.dumps({"error": error}).encode() + b"\n\n"
                writer.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
            elif b.kind == "garble":
                event = b'data: {"id": "chatcmpl-fake", "object": "chat.compl\n\n'
                writer.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
                writer.writelines(pieces[b.chunks_before_reset :])
            elif b.kind == "stall":
                # Hold the stream open until the client gives up, saying nothing (or only comments).
                comment = b": keep-alive\n\n"
                while not reader.at_eof():
                    if b.keepalive is None:
                        await reader.read()
                        break
                    writer.write(f"{len(comment):x}\r\n".encode() + comment + b"\r\n")
                    await writer.drain()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(reader.read(), b.keepalive)
                return False
            writer.write(b"0\r\n\r\n")  # the body ends cleanly, without [DONE]
            await writer.drain()
            return True
        if b.kind == "reset":
            for p in pieces[: max(1, b.chunks_before_reset)]:
                writer.write(p)
                await writer.drain()
                if b.chunk_delay:
                    await asyncio.sleep(b.chunk_delay)
            # Give the bytes time to leave, then cut the connection without finishing the body.
            await asyncio.sleep(0.05)
            writer.transport.abort()
            return False
        pieces.append(chunk({}, "stop"))
        if (body.get("stream_options") or {}).get("include_usage"):
            pieces.append(chunk({}, None, usage))
        done = b"data: [DONE]\n\n"
        pieces.append(f"{len(done):x}\r\n".encode() + done + b"\r\n")
        for p in pieces:
            writer.write(p)
            await writer.drain()
            if b.chunk_delay:
                await asyncio.sleep(b.chunk_delay)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True


def _split(text: str) -> list[str]:
    """Split text into a few stream deltas."""
    if len(text) < 3:
        return [text]
    third = len(text) // 3
    return [text[:third], text[third : 2 * third], text[2 * third :]]
