"""The transport's direct calls (``post``, ``open_post``) and its connection slots, on loopback.

The adapters' hot path bypasses httpx's client: these check what that path must still do right
(a body larger than the read-pause mark, a streamed body returned to the pool, the slot cap with
its pool timeout and cancellation), against a real asyncio HTTP server.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from providers.http11_transport import HTTP11Transport

BIG = b"x" * (3 << 20)  # above the transport's 1 MiB read-pause mark


async def _serve(delay_s: float = 0.0) -> tuple[asyncio.Server, list[int]]:
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        while True:
            head = await reader.readuntil(b"\r\n\r\n") if not reader.at_eof() else b""
            if not head:
                break
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
            body = await reader.readexactly(length)
            await asyncio.sleep(delay_s)
            answer = BIG if body == b"big" else body
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(answer) + answer)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, connections


def _url(server: asyncio.Server, path: str = "/v1/x?q=1") -> httpx.URL:
    port = server.sockets[0].getsockname()[1]
    return httpx.URL(f"http://127.0.0.1:{port}{path}")


@pytest.fixture
def transport() -> HTTP11Transport:
    return HTTP11Transport(max_connections=1)  # one slot: the tests count on it


async def test_post_reads_a_body_past_the_pause_mark_and_reuses_the_connection(
    transport: HTTP11Transport,
) -> None:
    server, connections = await _serve()
    async with server:
        status, _, body = await transport.post(_url(server), [], b"big", 10.0)
        assert status == 200 and body == BIG
        status, _, body = await transport.post(_url(server), [(b"x-a", b"1")], b"echo", 10.0)
        assert (status, body) == (200, b"echo")
        await transport.aclose()
    assert len(connections) == 1  # kept alive and reused


async def test_open_post_streams_and_closing_returns_the_slot(transport: HTTP11Transport) -> None:
    server, _ = await _serve()
    async with server:
        status, _, stream = await transport.open_post(_url(server), [], b"big", 5.0, 5.0, 5.0)
        assert status == 200
        assert b"".join([part async for part in stream]) == BIG
        await stream.aclose()
        # One slot in all: the next call gets it only because closing gave it back.
        status, _, body = await transport.post(_url(server), [], b"again", 5.0)
        assert body == b"again"
        await transport.aclose()


async def test_the_slot_cap_queues_and_times_out(transport: HTTP11Transport) -> None:
    server, _ = await _serve(delay_s=0.5)
    async with server:
        first = asyncio.ensure_future(transport.post(_url(server), [], b"one", 5.0))
        await asyncio.sleep(0.1)
        with pytest.raises(httpx.PoolTimeout):
            await transport.post(_url(server), [], b"two", 0.1)  # no slot within 0.1 s
        waiting = asyncio.ensure_future(transport.post(_url(server), [], b"three", 5.0))
        cancelled = asyncio.ensure_future(transport.post(_url(server), [], b"four", 5.0))
        await asyncio.sleep(0.1)
        cancelled.cancel()  # a cancelled waiter must not hold up or steal the slot
        assert (await first)[2] == b"one"
        assert (await waiting)[2] == b"three"
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert (await transport.post(_url(server), [], b"five", 5.0))[2] == b"five"
        await transport.aclose()
