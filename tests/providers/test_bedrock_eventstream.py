"""The event-stream decoder against frames built independently (the fake's encoder and by hand).

Framing: https://docs.aws.amazon.com/transcribe/latest/dg/streaming-setting-up.html
"""

from __future__ import annotations

import struct
import uuid
import zlib

import pytest

from providers.bedrock.eventstream import EventMessage, EventStreamDecoder, EventStreamError
from tests.support.fake_bedrock import encode_message, event, exception_event

FRAMES = [
    event("messageStart", {"role": "assistant"}),
    event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "héllo"}}),
    exception_event("throttlingException", "slow down"),
    encode_message({":message-type": "event", ":event-type": "ping"}, b""),  # an empty payload
]
STREAM = b"".join(FRAMES)


def _decode_all(pieces: list[bytes]) -> list[EventMessage]:
    decoder = EventStreamDecoder()
    out: list[EventMessage] = []
    for piece in pieces:
        out += decoder.feed(piece)
    assert decoder.pending == 0
    return out


def test_whole_stream_decodes_every_message_in_order() -> None:
    messages = _decode_all([STREAM])
    assert [m.headers.get(":event-type") or m.headers.get(":exception-type") for m in messages] == [
        "messageStart",
        "contentBlockDelta",
        "throttlingException",
        "ping",
    ]
    assert messages[1].headers == {
        ":event-type": "contentBlockDelta",
        ":content-type": "application/json",
        ":message-type": "event",
    }
    assert b'"text":"h\xc3\xa9llo"' in messages[1].payload
    assert messages[2].payload == b'{"message":"slow down"}'
    assert messages[3].payload == b""


def test_split_at_every_byte_boundary_gives_the_same_messages() -> None:
    whole = _decode_all([STREAM])
    for cut in range(1, len(STREAM)):
        assert _decode_all([STREAM[:cut], STREAM[cut:]]) == whole, cut


def test_one_byte_at_a_time() -> None:
    assert _decode_all([STREAM[i : i + 1] for i in range(len(STREAM))]) == _decode_all([STREAM])


def test_partial_message_is_held_not_returned() -> None:
    decoder = EventStreamDecoder()
    assert decoder.feed(FRAMES[0] + FRAMES[1][:-1]) == _decode_all([FRAMES[0]])
    assert decoder.pending == len(FRAMES[1]) - 1
    assert len(decoder.feed(FRAMES[1][-1:])) == 1
    assert decoder.pending == 0


def test_message_crc_mismatch_is_refused() -> None:
    frame = bytearray(FRAMES[1])
    frame[20] ^= 0x01  # a header byte: only the message CRC covers it
    with pytest.raises(EventStreamError, match="message CRC"):
        EventStreamDecoder().feed(FRAMES[0] + bytes(frame))


def test_prelude_crc_mismatch_is_refused_before_waiting_for_the_body() -> None:
    frame = bytearray(FRAMES[1])
    frame[3] ^= 0x01  # the total length: the prelude CRC no longer matches
    with pytest.raises(EventStreamError, match="prelude CRC"):
        EventStreamDecoder().feed(bytes(frame[:12]))


def test_impossible_lengths_are_refused() -> None:
    def prelude(total: int, headers: int) -> bytes:
        head = struct.pack(">II", total, headers)
        return head + struct.pack(">I", zlib.crc32(head))

    with pytest.raises(EventStreamError):
        EventStreamDecoder().feed(prelude(10, 0))  # shorter than prelude + CRC
    with pytest.raises(EventStreamError):
        EventStreamDecoder().feed(prelude(100, 200))  # headers longer than the message
    with pytest.raises(EventStreamError):
        EventStreamDecoder().feed(prelude(64 * 1024 * 1024, 0))  # past the payload limit


def test_every_header_value_type() -> None:
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")

    def header(name: str, kind: int, value: bytes) -> bytes:
        return bytes([len(name)]) + name.encode() + bytes([kind]) + value

    headers = b"".join(
        [
            header("t", 0, b""),
            header("f", 1, b""),
            header("b", 2, struct.pack(">b", -2)),
            header("s", 3, struct.pack(">h", -300)),
            header("i", 4, struct.pack(">i", 70000)),
            header("l", 5, struct.pack(">q", 2**40)),
            header("y", 6, struct.pack(">H", 3) + b"\x00\x01\x02"),
            header("str", 7, struct.pack(">H", 2) + b"ok"),
            header("ts", 8, struct.pack(">q", 1_700_000_000_000)),
            header("u", 9, ident.bytes),
        ]
    )
    payload = b"{}"
    total = 12 + len(headers) + len(payload) + 4
    head = struct.pack(">II", total, len(headers))
    message = head + struct.pack(">I", zlib.crc32(head)) + headers + payload
    message += struct.pack(">I", zlib.crc32(message))
    (decoded,) = EventStreamDecoder().feed(message)
    assert decoded.headers == {
        "t": True,
        "f": False,
        "b": -2,
        "s": -300,
        "i": 70000,
        "l": 2**40,
        "y": b"\x00\x01\x02",
        "str": "ok",
        "ts": 1_700_000_000_000,
        "u": ident,
    }
    assert decoded.payload == payload


def test_unknown_header_type_is_refused() -> None:
    headers = b"\x01x\x0a"  # type 10 does not exist
    total = 12 + len(headers) + 4
    head = struct.pack(">II", total, len(headers))
    message = head + struct.pack(">I", zlib.crc32(head)) + headers
    message += struct.pack(">I", zlib.crc32(message))
    with pytest.raises(EventStreamError, match="type 10"):
        EventStreamDecoder().feed(message)
