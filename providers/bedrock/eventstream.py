"""Decoder of AWS's binary event-stream framing (``application/vnd.amazon.eventstream``).

Reference: https://docs.aws.amazon.com/transcribe/latest/dg/streaming-setting-up.html (the
event-stream encoding, shared by every AWS streaming API) and
https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_ConverseStream.html.

A message is::

    total length (uint32) | headers length (uint32) | prelude CRC32 (uint32)
    headers (name length uint8, name, value type uint8, value) ...
    payload
    message CRC32 (uint32)

all big-endian; the prelude CRC covers the first 8 bytes, the message CRC everything before it.
Bytes arrive in arbitrary pieces (a message can be split anywhere, several can come in one
read), so the decoder buffers until a whole message is there. A CRC that does not match, or a
length no message can have, means the stream is corrupt: ``EventStreamError``, never a guess.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from dataclasses import dataclass

HeaderValue = bool | int | bytes | str | uuid.UUID

_PRELUDE = struct.Struct(">III")
_PRELUDE_LEN = 12
_CRC_LEN = 4
_MIN_MESSAGE = _PRELUDE_LEN + _CRC_LEN
# The limits botocore enforces: a larger length is a corrupt (or hostile) stream, and without a
# bound a bad length would make the decoder buffer forever.
MAX_HEADERS_LENGTH = 128 * 1024
MAX_PAYLOAD_LENGTH = 24 * 1024 * 1024

# Value type -> (struct of the fixed-size value, or None for the variable/special ones).
_BOOL_TRUE, _BOOL_FALSE, _BYTE, _SHORT, _INT, _LONG, _BYTES, _STRING, _TIMESTAMP, _UUID = range(10)
_FIXED: dict[int, struct.Struct] = {
    _BYTE: struct.Struct(">b"),
    _SHORT: struct.Struct(">h"),
    _INT: struct.Struct(">i"),
    _LONG: struct.Struct(">q"),
    _TIMESTAMP: struct.Struct(">q"),  # milliseconds since the epoch
}
_U16 = struct.Struct(">H")


class EventStreamError(ValueError):
    """The bytes are not a valid event stream (bad CRC, impossible length, bad header)."""


@dataclass(slots=True, frozen=True)
class EventMessage:
    headers: dict[str, HeaderValue]
    payload: bytes


class EventStreamDecoder:
    """Bytes in (any split), whole ``EventMessage`` values out, in order."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        """Bytes held of a message not yet complete (non-zero at the end: the stream was cut)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[EventMessage]:
        buf = self._buf
        buf += data
        out: list[EventMessage] = []
        start = 0
        end = len(buf)
        while end - start >= _PRELUDE_LEN:
            total, headers_len, prelude_crc = _PRELUDE.unpack_from(buf, start)
            if zlib.crc32(memoryview(buf)[start : start + 8]) != prelude_crc:
                raise EventStreamError("event stream prelude CRC mismatch")
            if headers_len > MAX_HEADERS_LENGTH:
                raise EventStreamError(f"event stream headers length {headers_len} exceeds the limit")
            payload_len = total - headers_len - _MIN_MESSAGE
            if payload_len < 0 or payload_len > MAX_PAYLOAD_LENGTH:
                raise EventStreamError(f"event stream message length {total} is invalid")
            if end - start < total:
                break
            body_end = start + total - _CRC_LEN
            (message_crc,) = struct.unpack_from(">I", buf, body_end)
            if zlib.crc32(memoryview(buf)[start:body_end]) != message_crc:
                raise EventStreamError("event stream message CRC mismatch")
            headers_start = start + _PRELUDE_LEN
            payload_start = headers_start + headers_len
            out.append(
                EventMessage(
                    _parse_headers(bytes(buf[headers_start:payload_start])),
                    bytes(buf[payload_start:body_end]),
                )
            )
            start += total
        if start:
            del buf[:start]
        return out


def _parse_headers(raw: bytes) -> dict[str, HeaderValue]:
    headers: dict[str, HeaderValue] = {}
    pos = 0
    n = len(raw)
    try:
        while pos < n:
            name_len = raw[pos]
            pos += 1
            name = raw[pos : pos + name_len].decode("utf-8")
            pos += name_len
            kind = raw[pos]
            pos += 1
            value: HeaderValue
            if kind == _BOOL_TRUE:
                value = True
            elif kind == _BOOL_FALSE:
                value = False
            elif kind in _FIXED:
                fixed = _FIXED[kind]
                (value,) = fixed.unpack_from(raw, pos)
                pos += fixed.size
            elif kind in (_BYTES, _STRING):
                (length,) = _U16.unpack_from(raw, pos)
                pos += 2
                data = raw[pos : pos + length]
                if len(data) != length:
                    raise EventStreamError("event stream header value is cut short")
                pos += length
                value = data.decode("utf-8") if kind == _STRING else data
            elif kind == _UUID:
                if pos + 16 > n:
                    raise EventStreamError("event stream header value is cut short")
                value = uuid.UUID(bytes=raw[pos : pos + 16])
                pos += 16
            else:
                raise EventStreamError(f"event stream header type {kind} is unknown")
            headers[name] = value
    except (IndexError, struct.error, UnicodeDecodeError):
        raise EventStreamError("event stream headers are malformed") from None
    if pos != n:
        raise EventStreamError("event stream headers overrun their length")
    return headers
