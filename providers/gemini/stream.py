"""Google's ``streamGenerateContent?alt=sse`` -> ``StreamEvent``s (Gemini API and Vertex AI).

Reference: https://ai.google.dev/api/generate-content#method:-models.streamgeneratecontent. Each
SSE event's data is a whole ``GenerateContentResponse`` holding the next parts of the answer; a
function call arrives whole in one part. The last one carries ``finishReason`` (and
``usageMetadata``, which earlier chunks may also carry, cumulatively); the stream then ends with
the connection: there is no terminator event. So ``Finish`` and ``UsageReport`` are sent when the
body ends, from the last reason and usage seen; a body that ends before any ``finishReason`` is a
truncated stream (502). A prompt blocked by safety is a first chunk with
``promptFeedback.blockReason`` and no candidates: a content-policy error before ``StreamStart``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from providers.contract import ProviderCall
from providers.errors import ProviderError, ProviderTimeoutError
from providers.formats.errors import FormatError
from providers.formats.fields import req_obj
from providers.formats.sse import SSEDecoder
from providers.gemini import chat
from providers.gemini.errors import malformed, transport_error, upstream_error
from providers.redaction import Scrubber
from providers.schema import (
    Finish,
    ReasoningDelta,
    StreamEvent,
    StreamStart,
    TextDelta,
    ToolCallDelta,
    UsageReport,
)
from providers.usage import Usage


@dataclass(slots=True)
class UpstreamRequest:
    """What to send, and how to scrub what comes back."""

    url: str
    headers: dict[str, str]
    payload: bytes
    answer_id: str  # the answer's id when the upstream gives no responseId
    clean: Scrubber  # scrubs this call's secrets from anything the upstream echoes


class StreamParser:
    """One answer's chunks (parsed JSON) -> ``StreamEvent``s; ``end()`` gives the closing events."""

    __slots__ = ("_answer", "_calls", "_clean", "_created", "_model", "_reason", "_started", "_usage")

    def __init__(self, *, answer_id: str, model: str, created: int, clean: Scrubber) -> None:
        self._answer = answer_id
        self._model = model
        self._created = created
        self._clean = clean
        self._started = False
        self._calls = 0
        self._reason: Any = None
        self._usage: Usage | None = None

    def feed_data(self, data: str) -> list[StreamEvent]:
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise FormatError(f"stream event is not JSON: {exc}") from None
        return self.feed(req_obj(chunk, "chunk"))

    def feed(self, chunk: Mapping[str, Any]) -> list[StreamEvent]:
        error = chunk.get("error")
        if isinstance(error, Mapping):
            # A failure after the 200 (Google sends the error object as one more event).
            code = error.get("code")
            raise upstream_error(
                code if isinstance(code, int) and code >= 400 else 500, orjson.dumps(chunk), None, self._clean
            )
        out: list[StreamEvent] = []
        if not self._started:
            chat.check_prompt(chunk)
            self._started = True
            self._answer = chat.answer_id(chunk, self._answer)
            version = chunk.get("modelVersion")
            model = version if isinstance(version, str) and version else self._model
            out.append(StreamStart(self._answer, model, self._created))
        candidate = chat.first_candidate(chunk)
        if candidate is not None:
            for part in chat.candidate_parts(candidate):
                call = chat.tool_call(part, self._answer, self._calls)
                if call is not None:
                    out.append(ToolCallDelta(self._calls, call.arguments, call.id, call.name))
                    self._calls += 1
                elif isinstance(part.get("text"), str) and part["text"]:
                    out.append(
                        ReasoningDelta(part["text"]) if part.get("thought") else TextDelta(part["text"])
                    )
            if candidate.get("finishReason") is not None:
                self._reason = candidate["finishReason"]
        usage = chat.usage(chunk.get("usageMetadata"))
        if usage is not None:
            self._usage = usage
        return out

    @property
    def finished(self) -> bool:
        return self._reason is not None

    def end(self) -> list[StreamEvent]:
        """``Finish`` and ``UsageReport`` once the body has ended."""
        if not self.finished:
            raise ProviderError(
                502, "upstream closed the stream before a finishReason", "api_error", "stream_truncated"
            )
        out: list[StreamEvent] = [Finish(chat.finish_reason(self._reason, self._calls > 0))]
        if self._usage is not None:
            out.append(UsageReport(self._usage))
        return out


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
        parser = StreamParser(
            answer_id=up.answer_id, model=call.upstream_model, created=int(time.time()), clean=up.clean
        )
        # Each event must follow the last within read_timeout: httpx's read timeout alone would
        # not see an upstream that keeps the socket busy without ever completing an event.
        last_event = time.monotonic()
        try:
            async for data in resp.aiter_bytes():
                events = decoder.feed(data)
                if not events:
                    if time.monotonic() - last_event > read_timeout:
                        raise ProviderTimeoutError(f"upstream sent no stream event for {read_timeout:g}s")
                    continue
                for event in events:
                    for item in _parse(parser, event.data):
                        yield item
                # From here: the time our consumer took is not the upstream's stall.
                last_event = time.monotonic()
            for event in decoder.end():
                for item in _parse(parser, event.data):
                    yield item
        except httpx.HTTPError as exc:
            raise transport_error(
                exc, f"upstream stream stalled for {read_timeout:g}s", "upstream stream broke"
            ) from exc
        for item in parser.end():
            yield item
    finally:
        await resp.aclose()


def _parse(parser: StreamParser, data: str) -> list[StreamEvent]:
    try:
        return parser.feed_data(data)
    except FormatError as exc:
        raise malformed(f"upstream stream does not parse: {exc.message}") from None
