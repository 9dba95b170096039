"""The keep-alive race in the HTTP/1.1 transport, against a raw-socket upstream on loopback.

An upstream may close an idle pooled connection just as the gateway reuses it. When our request
then reaches a socket the upstream has closed, the upstream answers with a TCP RST (not a FIN),
and the request fails with a read/write error before any response byte. The request was never
processed, so the transport retries it once on a fresh connection. It must not retry when the
connection was fresh (the upstream itself refused it) or when part of a response arrived.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from providers.http11_transport import HTTP11Transport

OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
PARTIAL = b"HTTP/1.1 200 OK\r\nContent-Type: text/pl"


@dataclass
class RawUpstream:
    """Answers each request by the plan of its connection: ``plans[i]`` for the i-th connection
    accepted, one action per request read on it: "ok" (200, kept alive), "reset" (RST without
    answering) or "partial" (part of the status line and headers, then RST). Connections beyond
    the plans answer "ok" to everything."""

    plans: list[list[str]]
    connections: int = 0
    requests: list[tuple[int, bytes]] = field(default_factory=list)  # (connection index, request line)
    _sock: socket.socket = field(init=False)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> RawUpstream:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        t = threading.Thread(target=self._accept_loop, daemon=True)
        t.start()
        self._threads.append(t)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def stop(self) -> None:
        # shutdown() wakes the thread blocked in accept() (close() alone does not, on Linux).
        self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        for t in self._threads:
            t.join(timeout=5)

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # listening socket closed
            with self._lock:
                index = self.connections
                self.connections += 1
            plan = self.plans[index] if index < len(self.plans) else []
            t = threading.Thread(target=self._serve, args=(conn, index, list(plan)), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, conn: socket.socket, index: int, plan: list[str]) -> None:
        buf = b""
        try:
            while True:
                request, buf = _read_request(conn, buf)
                if request is None:
                    return  # the client closed the connection
                with self._lock:
                    self.requests.append((index, request.split(b"\r\n", 1)[0]))
                action = plan.pop(0) if plan else "ok"
                if action == "ok":
                    conn.sendall(OK)
                    continue
                if action == "partial":
                    conn.sendall(PARTIAL)
                # SO_LINGER (on, 0 s): close() sends a RST instead of a FIN.
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
        finally:
            conn.close()


def _read_request(conn: socket.socket, buf: bytes) -> tuple[bytes | None, bytes]:
    """One request (headers and a Content-Length body) from ``conn``; ``None`` at EOF."""
    while b"\r\n\r\n" not in buf:
        data = conn.recv(65536)
        if not data:
            return None, buf
        buf += data
    head, rest = buf.split(b"\r\n\r\n", 1)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(rest) < length:
        data = conn.recv(65536)
        if not data:
            return None, buf
        rest += data
    return head, rest[length:]


@pytest.fixture
def raw_upstream() -> Iterator[list[RawUpstream]]:
    started: list[RawUpstream] = []
    yield started
    for up in started:
        up.stop()


def start(started: list[RawUpstream], *plans: list[str]) -> RawUpstream:
    up = RawUpstream(list(plans)).start()
    started.append(up)
    return up


async def post(client: httpx.AsyncClient, up: RawUpstream, n: int) -> httpx.Response:
    return await client.post(f"{up.url}/v1/chat/completions", content=b'{"n": %d}' % n)


async def test_reset_on_a_reused_connection_is_retried_on_a_fresh_one(
    raw_upstream: list[RawUpstream],
) -> None:
    up = start(raw_upstream, ["ok", "reset"])
    async with httpx.AsyncClient(transport=HTTP11Transport()) as client:
        first = await post(client, up, 1)
        assert (first.status_code, first.content) == (200, b"ok")
        second = await post(client, up, 2)  # reuses connection 0, which the upstream resets
        assert (second.status_code, second.content) == (200, b"ok")
    # The request reached connection 0 (reset there) and was answered on a new connection 1.
    assert up.connections == 2
    assert [i for i, _ in up.requests] == [0, 0, 1]


async def test_reset_on_a_fresh_connection_is_an_error(raw_upstream: list[RawUpstream]) -> None:
    up = start(raw_upstream, ["reset"])
    async with httpx.AsyncClient(transport=HTTP11Transport()) as client:
        with pytest.raises(httpx.TransportError):
            await post(client, up, 1)
    assert up.connections == 1
    assert len(up.requests) == 1


async def test_reset_after_part_of_the_response_is_an_error(raw_upstream: list[RawUpstream]) -> None:
    up = start(raw_upstream, ["ok", "partial"])
    async with httpx.AsyncClient(transport=HTTP11Transport()) as client:
        assert (await post(client, up, 1)).status_code == 200
        with pytest.raises(httpx.TransportError):
            await post(client, up, 2)  # reused, but response bytes arrived: maybe processed
    assert up.connections == 1
    assert len(up.requests) == 2


async def test_a_retried_request_that_fails_again_is_not_retried_twice(
    raw_upstream: list[RawUpstream],
) -> None:
    # Connection 0 is reset when reused; the fresh connection 1 is reset too: one retry only.
    up = start(raw_upstream, ["ok", "reset"], ["reset"])
    async with httpx.AsyncClient(transport=HTTP11Transport()) as client:
        assert (await post(client, up, 1)).status_code == 200
        with pytest.raises(httpx.TransportError):
            await post(client, up, 2)
    assert up.connections == 2
    assert [i for i, _ in up.requests] == [0, 0, 1]
