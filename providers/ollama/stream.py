"""Reading an ``/api/chat`` stream: newline-delimited JSON objects, the last with ``done: true``.

Reference: https://github.com/ollama/ollama/blob/main/docs/api.md#generate-a-chat-completion.
Each line is ``{model, created_at, message: {role, content, thinking?, tool_calls?}, done}``; a
tool call arrives whole in one line (arguments as an object); the final line carries
``done_reason``, ``prompt_eval_count`` and ``eval_count``. A failure after the 200 is an
``{"error": ...}`` line. ``StreamParser`` turns lines into ``StreamEvent``s; ``read_stream`` does
the HTTP: timeouts, truncation (a stream must end with ``done: true``), and cancelling the
upstream request when the consumer closes.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from providers.contract import ProviderCall
from providers.errors import ProviderError, ProviderTimeoutError
from providers.formats.errors import FormatError
from providers.ollama import chat
from providers.ollama.errors import malformed, stream_error, transport_error, upstream_error
from providers.schema import (
    Finish,
    ReasoningDelta,
    StreamEvent,
    StreamStart,
    TextDelta,
    ToolCallDelta,
    UsageReport,
)


@dataclass(slots=True)
class UpstreamRequest:
    """What to send, and how to name the answer and scrub the upstream's errors."""

    url: str
    headers: dict[str, str]
    payload: bytes
    answer_id: str
    clean: Callable[[str], str]


class StreamParser:
    """Parsed stream lines in, ``StreamEvent``s out; ``done`` once the final line was read."""

    __slots__ = ("_calls", "_clean", "_created", "_id", "_model", "_started", "done")

    def __init__(self, answer_id: str, model: str, created: int, clean: Callable[[str], str]) -> None:
        self._id = answer_id
        self._model = model
        self._created = created
        self._clean = clean
        self._started = False
        self._calls = 0  # tool calls seen so far: the next one's index
        self.done = False

    def feed(self, line: Mapping[str, Any]) -> list[StreamEvent]:
        if "error" in line:
            raise stream_error(line["error"], self._clean)
        events: list[StreamEvent] = []
        if not self._started:
            self._started = True
            events.append(StreamStart(self._id, str(line.get("model") or self._model), self._created))
        message = line.get("message")
        if isinstance(message, Mapping):
            thinking = message.get("thinking")
            if isinstance(thinking, str) and thinking:
                events.append(ReasoningDelta(thinking))
            content = message.get("content")
            if isinstance(content, str) and content:
                events.append(TextDelta(content))
            for call in chat.tool_calls(message.get("tool_calls"), self._id, self._calls):
                # Whole calls: the first (and only) piece carries id, name and all the arguments.
                events.append(ToolCallDelta(self._calls, call.arguments, call.id, call.name))
                self._calls += 1
        if line.get("done") is True:
            self.done = True
            events.append(Finish(chat.finish_reason(line.get("done_reason"), self._calls > 0)))
            events.append(UsageReport(chat.usage(line)))
        return events


async def read_stream(
    client: httpx.AsyncClient, up: UpstreamRequest, call: ProviderCall
) -> AsyncIterator[StreamEvent]:
    read_timeout = call.stream_timeout or call.timeout
    request = client.build_request(
        "POST",
        up.url,
        content=up.payload,
        headers=up.headers,
        timeout=httpx.Timeout(call.timeout, read=read_timeout, connect=min(10.0, call.timeout)),
    )
    try:
        resp = await client.send(request, stream=True)
    except httpx.HTTPError as exc:
        raise transport_error(exc, f"upstream timed out after {read_timeout:g}s") from exc
    # Closing the response on any exit (the consumer's aclose included) drops the connection,
    # which cancels the upstream request.
    try:
        if resp.status_code >= 300:
            try:
                body = await resp.aread()
            except httpx.HTTPError as exc:
                raise transport_error(exc, f"upstream timed out after {read_timeout:g}s") from exc
            raise upstream_error(resp.status_code, body, resp.headers, up.clean)
        parser = StreamParser(up.answer_id, call.upstream_model, int(time.time()), up.clean)
        buf = b""
        # Each line must follow the last within read_timeout: httpx's read timeout alone would
        # not see an upstream that keeps the socket busy without ever completing a line.
        last_line = time.monotonic()
        try:
            async for data in resp.aiter_bytes():
                stalled = time.monotonic() - last_line > read_timeout
                if parser.done:
                    if stalled:
                        break
                    continue  # read to the end, so the connection goes back to the pool
                buf = buf + data if buf else data
                if b"\n" not in buf:
                    if stalled:
                        raise ProviderTimeoutError(f"upstream sent no stream line for {read_timeout:g}s")
                    continue
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if parser.done:
                        break
                    for event in _parse_line(parser, line):
                        yield event
                # From here: the time our consumer took is not the upstream's stall.
                last_line = time.monotonic()
        except httpx.HTTPError as exc:
            raise transport_error(
                exc, f"upstream stream stalled for {read_timeout:g}s", "upstream stream broke"
            ) from exc
        if not parser.done:
            for event in _parse_line(parser, buf):  # a last line without its newline
                yield event
        if not parser.done:
            raise ProviderError(
                502, "upstream closed the stream before its done line", "api_error", "stream_truncated"
            )
    finally:
        await resp.aclose()


def _parse_line(parser: StreamParser, line: bytes) -> list[StreamEvent]:
    if not line.strip():
        return []
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise malformed("upstream sent a stream line that is not JSON") from None
    if not isinstance(obj, dict):
        raise malformed("upstream sent a stream line that is not a JSON object")
    try:
        return parser.feed(obj)
    except FormatError as exc:
        raise malformed(f"upstream stream does not parse: {exc.message}") from None
