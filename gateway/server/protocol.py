"""uvicorn's httptools protocol with every part of reading a request bounded.

uvicorn (0.55, httptools) has no limit on header size or count and no timeout on a request that
is never finished: a 100 MB header is buffered whole (and slows every other client while httptools
concatenates it), and a client that stops half-way holds its connection forever. This subclass
adds, per connection:

- header bytes and count (``MAX_HEADER_BYTES``, ``MAX_HEADERS``): 431;
- a ``Content-Length`` over the body limit: 413 before the body is read or the app runs;
- a deadline per phase of reading a request: headers within ``header_timeout_s`` of the request's
  first byte (a connection that never sends one is closed silently after the same time), the body
  within ``body_timeout_s`` of the headers: 408;
- malformed HTTP: 400 with the parser's reason instead of uvicorn's plain-text body.

Every answer it writes itself is the OpenAI error shape with ``connection: close``. The hot path
stays cheap: a request that arrives in one read arms no timer; timers are armed only while a
request is incomplete at the end of a read. Responses are written through a
``CoalescingWriter`` (``gateway.server.coalesce``): what one loop turn writes goes out in one send.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from gateway.errors import GatewayError
from gateway.server.body import DISCONNECT_KEY
from gateway.server.bounds import RequestBounds
from gateway.server.coalesce import CoalescingWriter

# Where the connection is in reading a request. IDLE: between requests (nothing of the next one
# received yet). HEAD: request line and headers. BODY: the body. LINGER: refused, draining.
_IDLE, _HEAD, _BODY, _LINGER = 0, 1, 2, 3


class _Refused(Exception):
    """Raised in a parser callback to stop parsing; ``data_received`` answers ``error``."""

    def __init__(self, error: GatewayError) -> None:
        super().__init__(error.message)
        self.error = error


def _client_error(status: int, message: str, code: str) -> GatewayError:
    type_ = "timeout" if status == 408 else "invalid_request_error"
    return GatewayError(status, message, type_, code)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` enforcing ``bounds`` (set per server by ``protocol_class``)."""

    bounds: ClassVar[RequestBounds] = RequestBounds()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase = _IDLE
        self._head_bytes = 0  # bytes received since the current request's first byte, while in HEAD
        self._deadline = 0.0  # when the current phase must be over (loop time)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._linger_left = self.bounds.linger_bytes

    # ---- connection ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._writer = CoalescingWriter(transport, self.loop)
        # A connection that never sends a byte is closed (silently: no request was made) too.
        self._deadline = self.loop.time() + self.bounds.header_timeout_s
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            scope = cycle.scope
            watch = scope.get(DISCONNECT_KEY)
            if watch is None and DISCONNECT_KEY in scope:
                scope[DISCONNECT_KEY] = False  # gone before the app started watching
            elif watch:  # a DisconnectWatch is waiting on this answer
                watch.client_gone()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        phase = self._phase
        if phase == _LINGER:
            # Refused: drop what the client is still sending, up to a point.
            self._linger_left -= len(data)
            if self._linger_left < 0:
                self.transport.close()
            return
        self._unset_keepalive_if_required()
        if phase == _IDLE:
            self._phase = _HEAD
            self._head_bytes = len(data)
            self._deadline = self.loop.time() + self.bounds.header_timeout_s
        elif phase == _HEAD:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError as exc:
            cause = exc.__context__  # what a callback raised, for HttpParserCallbackError
            if isinstance(cause, _Refused):
                self._refuse(cause.error)
            else:
                self.logger.warning("Invalid HTTP request received: %s", exc)
                self._refuse(_client_error(400, f"invalid HTTP request: {exc}", "invalid_http_request"))
            return
        if self._phase == _HEAD and self._head_bytes > self.bounds.max_header_bytes:
            # Checked per read, so an endless header costs at most one read past the limit.
            self._refuse(self._headers_too_large())
            return
        self._arm()

    # ---- parser callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._phase == _IDLE:
            # A pipelined request starting inside the read that completed the previous one.
            self._phase = _HEAD
            self._head_bytes = 0
            self._deadline = self.loop.time() + self.bounds.header_timeout_s
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        bounds = self.bounds
        headers = self.headers
        if len(headers) > bounds.max_headers:
            raise _Refused(
                _client_error(431, f"more than {bounds.max_headers} request headers", "headers_too_large")
            )
        if self._head_bytes > bounds.max_header_bytes:
            # The reads so far hold more than the limit, but may include body bytes: measure exactly.
            size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in headers)
            if size > bounds.max_header_bytes:
                raise _Refused(self._headers_too_large())
        for name, value in headers:
            if name == b"content-length":
                if int(value) > bounds.max_body_bytes:
                    mb = bounds.max_body_bytes / (1024 * 1024)
                    message = f"request body is larger than {mb:g} MB"
                    raise _Refused(_client_error(413, message, "request_too_large"))
                break
        self._phase = _BODY
        self._deadline = self.loop.time() + bounds.body_timeout_s
        self.scope[DISCONNECT_KEY] = None  # this server reports disconnects (DisconnectWatch)
        super().on_headers_complete()
        if self.cycle is not None:
            self.cycle.transport = self._writer  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        self._phase = _IDLE
        super().on_message_complete()

    def on_response_complete(self) -> None:
        self._writer.flush()  # a complete answer goes now, not at the end of the turn
        super().on_response_complete()

    def shutdown(self) -> None:
        self._writer.flush()
        super().shutdown()

    # ---- timeouts and refusals -------------------------------------------------------------

    def _headers_too_large(self) -> GatewayError:
        kib = self.bounds.max_header_bytes // 1024
        return _client_error(431, f"request headers are larger than {kib} KiB", "headers_too_large")

    def _arm(self) -> None:
        """A timer at the current phase's deadline while a request is incomplete; none otherwise."""
        if self._phase == _IDLE and self.cycle is not None:
            self._cancel_timer()  # between requests: uvicorn's keep-alive timeout applies
            return
        if self._timer is None or self._timer_at != self._deadline:
            self._cancel_timer()
            self._timer = self.loop.call_at(self._deadline, self._on_deadline)
            self._timer_at = self._deadline

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_deadline(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self._phase == _IDLE:
            self.transport.close()  # a connection that never sent a request
        elif self._phase == _HEAD:
            seconds = self.bounds.header_timeout_s
            message = f"request headers not received within {seconds:g} s"
            self._refuse(_client_error(408, message, "request_timeout"))
        elif self._phase == _BODY:
            seconds = self.bounds.body_timeout_s
            message = f"request body not received within {seconds:g} s"
            self._refuse(_client_error(408, message, "request_timeout"))
        else:
            self.transport.close()  # the linger is over

    def _refuse(self, error: GatewayError) -> None:
        """Answer ``error`` if this connection can still answer, then linger and close."""
        self._cancel_timer()
        cycle = self.cycle
        if self._phase == _BODY:  # ``cycle`` is this request's
            if cycle.response_started:
                self._writer.close()  # the app answered (or is answering): no second answer
                return
            # The app is waiting for a body that will not come: it sees the client as gone.
            cycle.disconnected = True
            cycle.message_event.set()
        elif cycle is not None and not cycle.response_complete:
            # The next request of a pipeline is bad while the previous response is being sent:
            # let that response finish, then close; the bad request gets no answer.
            cycle.keep_alive = False
            self._phase = _LINGER
            return
        self._write_error(error)
        self._phase = _LINGER
        self._deadline = self.loop.time() + self.bounds.linger_s
        self._timer = self.loop.call_at(self._deadline, self._on_deadline)
        self._timer_at = self._deadline

    def _write_error(self, error: GatewayError) -> None:
        body = error.body()
        content = [STATUS_LINE[error.status]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend(
            [
                b"content-type: application/json\r\n",
                b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                b"connection: close\r\n",
                b"\r\n",
                body,
            ]
        )
        self._writer.flush()  # after whatever an earlier response still holds
        self.transport.write(b"".join(content))


def protocol_class(bounds: RequestBounds) -> type[BoundedHttpToolsProtocol]:
    """The protocol class to pass to uvicorn as ``http=``, enforcing ``bounds``."""
    return type("BoundedHttpToolsProtocol", (BoundedHttpToolsProtocol,), {"bounds": bounds})
