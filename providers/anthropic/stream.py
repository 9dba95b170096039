"""Reading a Messages API stream (https://docs.anthropic.com/en/api/messages-streaming).

The body is server-sent events: ``message_start``, then per content block
``content_block_start`` / ``content_block_delta``... / ``content_block_stop`` (``text_delta``,
``input_json_delta``, ``thinking_delta``, ``signature_delta``), ``ping`` at any point,
``message_delta`` (stop reason, output usage) and ``message_stop``; or an ``error`` event in
place of the rest. ``providers.formats.anthropic_messages.StreamParser`` turns the events into
``StreamEvent``s; this module does the HTTP: timeouts, the error event, truncation (a stream
must end with ``message_stop``), and cancelling the upstream request when the consumer closes.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator

import httpx

from providers.anthropic.chat import UpstreamRequest
from providers.anthropic.errors import malformed, stream_error, transport_error
from providers.contract import ProviderCall
from providers.errors import ProviderError, ProviderTimeoutError
from providers.formats.anthropic_messages import StreamParser
from providers.formats.errors import FormatError, StreamError
from providers.formats.sse import SSEDecoder, SSEEvent
from providers.schema import StreamEvent, UsageReport


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
            raise up.read_error(resp.status_code, body, resp.headers, up.clean)
        reader = _EventReader(up, int(time.time()))
        # Each event must follow the last within read_timeout: httpx's read timeout alone would
        # not see an upstream that keeps the socket busy without ever completing an event.
        last_event = time.monotonic()
        try:
            async for data in resp.aiter_bytes():
                stalled = time.monotonic() - last_event > read_timeout
                if reader.stopped:
                    if stalled:
                        break
                    continue  # read to the end, so the connection goes back to the pool
                events = reader.decoder.feed(data)
                if not events:
                    if stalled:
                        raise ProviderTimeoutError(f"upstream sent no stream event for {read_timeout:g}s")
                    continue
                for item in reader.parse(events):
                    yield item
                # From here: the time our consumer took is not the upstream's stall.
                last_event = time.monotonic()
        except httpx.HTTPError as exc:
            raise transport_error(
                exc, f"upstream stream stalled for {read_timeout:g}s", "upstream stream broke"
            ) from exc
        if not reader.stopped:
            for item in reader.parse(reader.decoder.end()):
                yield item
        if not reader.stopped:
            raise ProviderError(
                502, "upstream closed the stream before message_stop", "api_error", "stream_truncated"
            )
    finally:
        await resp.aclose()


class _EventReader:
    """SSE events -> ``StreamEvent``s, noting when ``message_stop`` has been read."""

    __slots__ = ("_clean", "_parser", "decoder", "stopped")

    def __init__(self, up: UpstreamRequest, created: int) -> None:
        self.decoder = SSEDecoder()
        self._parser = StreamParser(created=created, json_mode=up.json_mode)
        self._clean = up.clean
        self.stopped = False

    def parse(self, events: list[SSEEvent]) -> Iterator[StreamEvent]:
        """The events' ``StreamEvent``s, one by one (those before an error event still count)."""
        for event in events:
            if self.stopped:
                return
            try:
                items = self._parser.feed_data(event.data)
            except StreamError as exc:
                raise stream_error(exc.type, exc.message, self._clean) from None
            except FormatError as exc:
                raise malformed(f"upstream stream does not parse: {exc.message}") from None
            # The parser reports usage once, at message_stop: the end of a whole answer.
            self.stopped = bool(items) and isinstance(items[-1], UsageReport)
            yield from items
