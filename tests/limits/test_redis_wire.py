"""The pipelined RESP connection: encoding, parsing cut-up replies, pipelining, uvloop, AUTH-less URLs."""

from __future__ import annotations

import asyncio

import pytest
import uvloop
from redis.exceptions import NoScriptError, ResponseError

from gateway.redis_pool import RedisPool
from gateway.redis_wire import RespProtocol, encode_command, parse_reply


@pytest.mark.asyncio(loop_scope="session")
async def test_encode() -> None:
    assert encode_command(("SET", b"k", 5, 1.5)) == b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n5\r\n$3\r\n1.5\r\n"
    with pytest.raises(TypeError):
        encode_command(("SET", None))


@pytest.mark.asyncio(loop_scope="session")
async def test_replies_split_at_every_byte_resolve_in_order() -> None:
    stream = (
        b"+OK\r\n:42\r\n$5\r\nhello\r\n$-1\r\n*2\r\n:1\r\n$1\r\nx\r\n"
        b"-NOSCRIPT No matching script\r\n-ERR bad\r\n"
    )
    loop = asyncio.get_running_loop()
    proto = RespProtocol()
    futs = [loop.create_future() for _ in range(7)]
    proto.pending.extend(futs)
    for i in range(len(stream)):
        proto.data_received(stream[i : i + 1])
    values = [f.result() for f in futs]
    assert values[:5] == [b"OK", 42, b"hello", None, [1, b"x"]]
    assert isinstance(values[5], NoScriptError)
    assert isinstance(values[6], ResponseError) and not isinstance(values[6], NoScriptError)
    assert parse_reply(b"*0\r\n", 0) == ([], 4)


@pytest.mark.asyncio(loop_scope="session")
async def test_pipelined_commands_on_real_redis(redis_url: str, redis_prefix: str) -> None:
    pool = RedisPool(redis_url, socket_timeout=1.0, connect_timeout=1.0)
    try:
        key = f"{redis_prefix}:wire"
        replies = await asyncio.gather(*(pool.execute("t", "INCR", key) for _ in range(50)))
        assert sorted(replies) == list(range(1, 51))
        assert await pool.execute("t", "GET", key) == b"50"
        with pytest.raises(ResponseError):
            await pool.execute("t", "HGET", key, "f")  # wrong type: a bug, raised as is
        assert await pool.execute("t", "DEL", key) == 1
    finally:
        await pool.close()


def test_works_on_uvloop(redis_url: str, redis_prefix: str) -> None:
    async def main() -> bytes:
        pool = RedisPool(redis_url, socket_timeout=1.0, connect_timeout=1.0)
        try:
            await pool.execute("t", "SET", f"{redis_prefix}:uv", "v", "PX", 5000)
            return await pool.execute("t", "GET", f"{redis_prefix}:uv")
        finally:
            await pool.close()

    assert uvloop.run(main()) == b"v"
