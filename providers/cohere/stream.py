"""Reading a Cohere v2 chat stream (https://docs.cohere.com/reference/chat-stream).

The body is server-sent events whose JSON ``data`` names its ``type``: ``message-start`` (the
answer's ``id``), per content block ``content-start`` / ``content-delta``... / ``content-end``
(``delta.message.content.text``, or ``.thinking``), ``tool-plan-delta``
(``delta.message.tool_plan``), per tool call ``tool-call-start`` (the call's ``id`` and
``function.name``, maybe a first piece of ``arguments``) / ``tool-call-delta``... (``arguments``
fragments) / ``tool-call-end``, ``citation-start`` / ``citation-end``, and ``message-end``
(``finish_reason``, ``usage``, or an ``error``). A ``data: [DONE]`` may follow.

``StreamParser`` turns events into ``StreamEvent``s (tool calls whole and in order: each call's
id and name first, then its arguments); ``read_stream`` does the HTTP: timeouts, errors,
truncation (a stream must reach ``message-end``), and cancelling the upstream request when the
consumer closes.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import httpx
import orjson

from providers.cohere.chat import UpstreamRequest, finish_reason, parse_usage
from providers.cohere.errors import malformed, stream_error, transport_error, upstream_error
from providers.contract import ProviderCall
from providers.errors import ProviderError, ProviderTimeoutError
from providers.formats.errors import FormatError
from providers.formats.fields import req_obj
from providers.formats.sse import SSEDecoder
from providers.schema import (
    Finish,
    ReasoningDelta,
    StreamEvent,
    StreamStart,
    TextDelta,
    ToolCallDelta,
    UsageReport,
)


class StreamParser:
    """One answer's events (parsed JSON) -> ``StreamEvent``s. ``StreamStart`` comes first even if
    the upstream skipped ``message-start``; ``ended`` turns true at ``message-end``."""

    __slots__ = ("_args_sent", "_calls", "_clean", "_created", "_model", "_started", "ended")

    def __init__(self, *, model: str, created: int, clean: Callable[[str], str]) -> None:
        self._model = model
        self._created = created
        self._clean = clean
        self._started = False
        self._calls = 0  # tool calls started so far; the current one is _calls - 1
        self._args_sent = False  # whether the current tool call has streamed any arguments
        self.ended = False

    def feed_data(self, data: str) -> list[StreamEvent]:
        if data == "[DONE]":
            return []
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise FormatError(f"stream event is not JSON: {exc}") from None
        return self.feed(req_obj(event, "event"))

    def feed(self, event: Mapping[str, Any]) -> list[StreamEvent]:
        if self.ended:
            return []
        kind = event.get("type")
        out: list[StreamEvent] = []
        if not self._started:
            self._started = True
            out.append(StreamStart(str(event.get("id") or ""), self._model, self._created))
        message = _delta_message(event)
        if kind == "content-delta" or kind == "content-start":
            content = message.get("content")
            if isinstance(content, Mapping):
                text, thought = content.get("text"), content.get("thinking")
                if isinstance(text, str) and text:
                    out.append(TextDelta(text))
                if isinstance(thought, str) and thought:
                    out.append(ReasoningDelta(thought))
        elif kind == "tool-plan-delta":
            plan = message.get("tool_plan")
            if isinstance(plan, str) and plan:
                out.append(ReasoningDelta(plan))
        elif kind == "tool-call-start":
            call = req_obj(message.get("tool_calls"), "delta.message.tool_calls")
            fn = call.get("function") if isinstance(call.get("function"), Mapping) else {}
            arguments = fn.get("arguments") if isinstance(fn.get("arguments"), str) else ""
            self._calls += 1
            self._args_sent = bool(arguments)
            out.append(
                ToolCallDelta(
                    self._calls - 1, arguments, str(call.get("id") or ""), str(fn.get("name") or "")
                )
            )
        elif kind == "tool-call-delta":
            if self._calls == 0:
                raise FormatError("tool-call-delta before any tool-call-start")
            call = message.get("tool_calls")
            fn = call.get("function") if isinstance(call, Mapping) else None
            fragment = fn.get("arguments") if isinstance(fn, Mapping) else None
            if isinstance(fragment, str) and fragment:
                self._args_sent = True
                out.append(ToolCallDelta(self._calls - 1, fragment))
        elif kind == "tool-call-end":
            if self._calls and not self._args_sent:
                # A call without arguments streams none; OpenAI clients expect a JSON object.
                self._args_sent = True
                out.append(ToolCallDelta(self._calls - 1, "{}"))
        elif kind == "message-end":
            self.ended = True
            delta = event.get("delta") if isinstance(event.get("delta"), Mapping) else {}
            error = delta.get("error")
            if isinstance(error, str) and error:
                raise stream_error(error, self._clean)
            out.append(Finish(finish_reason(delta.get("finish_reason"))))
            usage = parse_usage(delta.get("usage"))
            if usage is not None:
                out.append(UsageReport(usage))
        # message-start, content-end, citation-*, debug and later types carry nothing to translate.
        return out


def _delta_message(event: Mapping[str, Any]) -> Mapping[str, Any]:
    delta = event.get("delta")
    message = delta.get("message") if isinstance(delta, Mapping) else None
    return message if isinstance(message, Mapping) else {}


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
        decoder = SSEDecoder()
        parser = StreamParser(model=call.upstream_model, created=int(time.time()), clean=up.clean)
        # Each event must follow the last within read_timeout: httpx's read timeout alone would
        # not see an upstream that keeps the socket busy without ever completing an event.
        last_event = time.monotonic()
        try:
            async for data in resp.aiter_bytes():
                stalled = time.monotonic() - last_event > read_timeout
                if parser.ended:
                    if stalled:
                        break
                    continue  # read to the end ([DONE]), so the connection goes back to the pool
                events = decoder.feed(data)
                if not events:
                    if stalled:
                        raise ProviderTimeoutError(f"upstream sent no stream event for {read_timeout:g}s")
                    continue
                for event in events:
                    for item in _parse(parser, event.data):
                        yield item
                # From here: the time our consumer took is not the upstream's stall.
                last_event = time.monotonic()
            if not parser.ended:
                for event in decoder.end():
                    for item in _parse(parser, event.data):
                        yield item
        except httpx.HTTPError as exc:
            raise transport_error(
                exc, f"upstream stream stalled for {read_timeout:g}s", "upstream stream broke"
            ) from exc
        if not parser.ended:
            raise ProviderError(
                502, "upstream closed the stream before message-end", "api_error", "stream_truncated"
            )
    finally:
        await resp.aclose()


def _parse(parser: StreamParser, data: str) -> list[StreamEvent]:
    try:
        return parser.feed_data(data)
    except FormatError as exc:
        raise malformed(f"upstream stream does not parse: {exc.message}") from None
