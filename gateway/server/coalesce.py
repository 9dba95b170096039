"""Response writes joined per event-loop turn: one ``send`` for what one turn wrote.

uvicorn writes the response head as soon as the app starts its answer, and every body part as
its own ``transport.write``, each one a ``send`` system call and, on loopback or a LAN, a packet
and a wake-up for the client. An answer is a head plus a body written in the same turn; a
stream relays the events of each upstream read in one turn (twenty chunks per read in
``bench/gateway_overhead.py``). This writer keeps what a turn writes and sends it at the end of
the turn (``call_soon``), when the response completes, before the connection closes, or once
``FLUSH_BYTES`` are held (so the transport's own flow control still sees large writes).
Nothing waits longer than the turn it was written in.
"""

from __future__ import annotations

import asyncio
from typing import Any

FLUSH_BYTES = 64 * 1024


class CoalescingWriter:
    """Stands in for a response cycle's transport; every other attribute is the transport's."""

    __slots__ = ("_loop", "_parts", "_scheduled", "_size", "transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self._loop = loop
        self._parts: list[bytes] = []
        self._size = 0
        self._scheduled = False

    def write(self, data: bytes) -> None:
        if not data:
            return
        self._parts.append(data)
        self._size += len(data)
        if self._size >= FLUSH_BYTES:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._end_of_turn)

    def flush(self) -> None:
        parts = self._parts
        if not parts:
            return
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self._parts = []
        self._size = 0
        if not self.transport.is_closing():
            self.transport.write(data)

    def _end_of_turn(self) -> None:
        self._scheduled = False
        self.flush()

    def __getattr__(self, name: str) -> Any:
        # close(), is_closing(), get_extra_info()...: what was written goes first.
        self.flush()
        return getattr(self.transport, name)
