"""Server-sent events: the one codec every stream in the gateway is framed and unframed with.

Encoding writes ``event:`` (optional) and ``data:`` lines and a blank line. Decoding follows the
WHATWG event-stream rules (https://html.spec.whatwg.org/multipage/server-sent-events.html):
lines end in CRLF, LF or CR; lines starting with ``:`` are comments (keep-alives); several
``data:`` lines of one event join with ``\\n``; one space after the colon is dropped; an event
with no data is not dispatched. The decoder is incremental: feed it bytes as they arrive, in
pieces of any size, and it returns the events completed so far.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

# The OpenAI stream terminator.
DONE = b"data: [DONE]\n\n"

_BOM = b"\xef\xbb\xbf"


@dataclass(slots=True)
class SSEEvent:
    data: str
    event: str | None = None  # the ``event:`` name; None means the default ("message")
    id: str | None = None


def encode(data: str | bytes, event: str | None = None) -> bytes:
    """One event, framed. Data with line breaks becomes several ``data:`` lines (decoded back whole)."""
    raw = data.encode() if isinstance(data, str) else data
    if b"\n" in raw or b"\r" in raw:
        lines = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        body = b"".join(b"data: " + line + b"\n" for line in lines)
    else:
        body = b"data: " + raw + b"\n"
    if event is None:
        return body + b"\n"
    return b"event: " + event.encode() + b"\n" + body + b"\n"


def encode_json(obj: Any, event: str | None = None) -> bytes:
    """``obj`` as compact JSON in one event (JSON text has no raw line breaks: one ``data:`` line)."""
    if event is None:
        return b"data: " + orjson.dumps(obj) + b"\n\n"
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


class SSEDecoder:
    """Incremental decoder: ``feed`` bytes, get the events they complete; ``end`` at end of stream."""

    __slots__ = ("_buf", "_data", "_event", "_id", "_started")

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[bytes] = []
        self._event: str | None = None
        self._id: str | None = None
        self._started = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        buf = self._buf + chunk if self._buf else chunk
        if not self._started:
            # A byte-order mark may open the stream; it may arrive split, so wait for 3 bytes.
            if len(buf) < 3 and _BOM.startswith(buf):
                self._buf = buf
                return []
            self._started = True
            if buf.startswith(_BOM):
                buf = buf[3:]
        events: list[SSEEvent] = []
        pos = 0
        n = len(buf)
        while pos < n:
            lf = buf.find(b"\n", pos)
            cr = buf.find(b"\r", pos, n if lf == -1 else lf)
            if cr != -1:
                if cr + 1 == n:
                    break  # a CR last in the buffer may be the first half of a CRLF
                end, nxt = cr, (cr + 2 if buf[cr + 1] == 10 else cr + 1)
            elif lf != -1:
                end, nxt = lf, lf + 1
            else:
                break
            self._line(buf[pos:end], events)
            pos = nxt
        self._buf = buf[pos:]
        return events

    def end(self) -> list[SSEEvent]:
        """At end of stream: an unterminated last line is taken as a line.

        The pending event is dispatched too, though the spec discards it: some servers omit the
        final blank line, and callers detect truncation by their format's own end marker.
        """
        events: list[SSEEvent] = []
        tail = self._buf[:-1] if self._buf.endswith(b"\r") else self._buf
        self._buf = b""
        if tail:
            self._line(tail, events)
        self._line(b"", events)
        return events

    @property
    def pending(self) -> bool:
        """Whether bytes of an incomplete event are buffered."""
        return bool(self._buf or self._data or self._event is not None)

    def _line(self, line: bytes, events: list[SSEEvent]) -> None:
        if not line:
            if self._data:
                events.append(
                    SSEEvent(b"\n".join(self._data).decode(errors="replace"), self._event, self._id)
                )
                self._data = []
            self._event = None
            return
        if line[0] == 58:  # ":" a comment: keep-alive
            return
        colon = line.find(b":")
        if colon == -1:
            name, value = line, b""
        else:
            name = line[:colon]
            value = line[colon + 2 :] if line[colon + 1 : colon + 2] == b" " else line[colon + 1 :]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value.decode(errors="replace")
        elif name == b"id" and b"\0" not in value:
            self._id = value.decode(errors="replace")
        # "retry" and unknown fields are ignored, as the spec says.
