"""Reading a request body inside a route: bounded in size, nesting checked before any parser runs.

``MAX_JSON_DEPTH`` is the one nesting limit for every JSON body the gateway accepts (chat and
admin alike). Without it, a deep body reaches parsers and serialisers with their own, different
limits: the stdlib ``json`` raises ``RecursionError`` (a 500) near 1,000 levels, and orjson, which
forwards chat bodies upstream, refuses to *write* more than 254 levels after it read them fine.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from itertools import accumulate, repeat
from operator import sub
from typing import Any

from gateway.errors import GatewayError, bad_request

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]

# Deep enough for any real request (tool schemas nest a dozen levels); shallow enough for every
# parser, serialiser and recursive walk (cache keys, redaction) the body meets on its way.
MAX_JSON_DEPTH = 64

# Structure marks: quotes and brackets, with both kinds of bracket written as [ and ].
_MARKS = bytes.maketrans(b"{}", b"[]")
_NOT_MARKS = bytes(b for b in range(256) if b not in b'"[]{}')
# An opening bracket becomes 2 and a closing one 0, so (byte - 1) is the depth step.
_STEPS = bytes.maketrans(b"[]", b"\x02\x00")


class ClientGone(Exception):
    """The client disconnected before the request body was read."""


# A scope key set by ``gateway.server.protocol``: the server itself reports a client that goes
# away mid-answer (its ``connection_lost``) to the ``DisconnectWatch`` stored under this key,
# so the watch needs no task of its own per request.
DISCONNECT_KEY = "switchyard.disconnect_watch"


def too_large(limit: int) -> GatewayError:
    mb = limit / (1024 * 1024)
    return GatewayError(
        413, f"request body is larger than {mb:g} MB", "invalid_request_error", "request_too_large"
    )


async def read_body(receive: Receive, content_length: bytes | str | None, limit: int) -> bytes:
    """The whole body, or 413 as soon as it (declared or received) passes ``limit`` bytes."""
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise bad_request("invalid Content-Length header") from None
        if declared > limit:
            raise too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:  # enforced while reading too: Content-Length may be absent (chunked)
                raise too_large(limit)
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def check_json_depth(raw: bytes, limit: int = MAX_JSON_DEPTH) -> None:
    """400 if the JSON text ``raw`` nests arrays/objects deeper than ``limit``; before parsing it.

    Every step is a C-level bytes operation (a 250 KB conversation costs about 0.2 ms, half of
    what parsing it costs; a small body about a microsecond). Keep only quotes and brackets; fewer
    opening brackets than the limit cannot nest deeper (almost every body stops there). Otherwise:
    drop escapes, drop string contents, then peel innermost ``[]`` pairs once per level; a body
    still holding a pair after ``limit`` peels is too deep. Invalid JSON is left to the parser to
    report, except an unbalanced run of brackets, whose deepest prefix is measured exactly (a
    parser would recurse into it too).
    """
    marks = raw.translate(_MARKS, _NOT_MARKS)
    if marks.count(b"[") <= limit:
        return
    if b"\\" in raw:
        # Pairs first: of a run of backslashes only an odd last one escapes the next character.
        marks = raw.replace(b"\\\\", b"").replace(b'\\"', b"").translate(_MARKS, _NOT_MARKS)
    # Adjacent quotes close one string and open the next with no bracket between: dropping them
    # merges string contents, which are dropped next anyway.
    marks = marks.replace(b'""', b"")
    if b'"' in marks:
        marks = b"".join(marks.split(b'"')[::2])  # even pieces are outside strings
    rest = marks
    for _ in range(limit):
        if not rest:
            return
        rest = rest.replace(b"[]", b"")
    if not rest:
        return
    if b"[]" not in rest and max(accumulate(map(sub, marks.translate(_STEPS), repeat(1)))) <= limit:
        return  # unbalanced but shallow: the parser will say what is wrong
    raise bad_request(
        f"request body nests JSON deeper than {limit} levels (the limit for every body)",
        code="json_too_deep",
    )
