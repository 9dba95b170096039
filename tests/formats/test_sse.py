"""The SSE codec: framing, and incremental decoding under every split of the byte stream."""

from __future__ import annotations

from providers.formats.sse import DONE, SSEDecoder, SSEEvent, encode, encode_json


def _decode_all(stream: bytes, step: int) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for i in range(0, len(stream), step):
        events += decoder.feed(stream[i : i + step])
    return events + decoder.end()


def test_encode_plain_named_and_multiline() -> None:
    assert encode('{"a":1}') == b'data: {"a":1}\n\n'
    assert encode(b"x", event="ping") == b"event: ping\ndata: x\n\n"
    assert encode("one\ntwo\r\nthree") == b"data: one\ndata: two\ndata: three\n\n"
    assert encode_json({"type": "ping"}, event="ping") == b'event: ping\ndata: {"type":"ping"}\n\n'
    assert encode_json({"a": "x\ny"}) == b'data: {"a":"x\\ny"}\n\n'
    assert DONE == b"data: [DONE]\n\n"


def test_decode_every_split_point_gives_the_same_events() -> None:
    stream = (
        b"\xef\xbb\xbf: keep-alive\r\n\r\n"
        b'event: message_start\r\ndata: {"a":1}\r\n\r\n'
        b"data:no-space\n\n"
        b"data: line1\rdata: line2\r\r"
        b"id: 7\nevent: x\ndata:  two spaces\ndata\n\n"
        b"retry: 100\nunknown: z\n\n"
        b"data: caf\xc3\xa9\n\n"
        b"data: [DONE]\n\n"
    )
    expected = [
        SSEEvent('{"a":1}', "message_start"),
        SSEEvent("no-space"),
        SSEEvent("line1\nline2"),
        SSEEvent(" two spaces\n", "x", "7"),
        SSEEvent("café", None, "7"),
        SSEEvent("[DONE]", None, "7"),
    ]
    for step in range(1, len(stream) + 1):
        assert _decode_all(stream, step) == expected, step


def test_encode_decode_round_trip() -> None:
    decoder = SSEDecoder()
    framed = encode("a\nb", event="e") + encode_json({"k": [1, 2]}) + encode("")
    assert decoder.feed(framed) == [SSEEvent("a\nb", "e"), SSEEvent('{"k":[1,2]}'), SSEEvent("")]
    assert not decoder.pending


def test_incomplete_event_is_pending_until_end() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"event: e\ndata: par") == []
    assert decoder.pending
    assert decoder.feed(b"tial") == []
    assert decoder.end() == [SSEEvent("partial", "e")]
    assert not decoder.pending


def test_event_name_without_data_is_not_dispatched_and_resets() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"event: lonely\n\ndata: d\n\n") == [SSEEvent("d")]
