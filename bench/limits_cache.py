"""What rate limits and the response cache add per request, and how fast a cache hit answers.

Parts (all in one run, against the Redis at 127.0.0.1:6379 or a private one):

1. In-process costs (µs per request): limiter admit+settle with key + team + model + global
   scopes (Redis: one pipelined EVALSHA round trip; in-process), cache plan+lookup (miss
   through to Redis; LRU hit), against a null stage measured alike.
2. Through the gateway (a real ``switchyard serve`` process, fake OpenAI upstream): req/s per
   gateway core with limits and cache on but every request a cache miss, next to the same
   gateway with both off (the peer, same run), and the ratio against LiteLLM's ~100 req/s/core
   (SPINE's overhead benchmark, bench/gateway_overhead.py, measures LiteLLM itself).
3. Cache-hit latency end to end at concurrency 1 (p50 / p99; target: p50 under 1 ms).

Run: .venv/bin/python bench/limits_cache.py [--n 3000] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import orjson

from gateway.cache import CacheSettings, ResponseCacheService
from gateway.limits import LimitSettings, MemoryLimiter, RedisLimiter
from gateway.null_stages import NullLimiter
from gateway.pipeline import LimitScope, Principal, Usage
from gateway.redis_pool import RedisPool
from tests.support.fake_openai import Behavior, FakeOpenAI
from tests.support.gateway_process import gateway_process
from tests.support.redis_server import SHARED_HOST, SHARED_PORT, RedisServer, _ping

MASTER = "sk-bench-master"
LITELLM_RPS_PER_CORE = 100.0  # SPINE's overhead benchmark, this machine
BODY = {"model": "m", "messages": [{"role": "user", "content": "hello there"}], "temperature": 0}


def principal(prefix: str) -> Principal:
    return Principal(
        "virtual",
        key_hash=f"{prefix}-key",
        team_id=f"{prefix}-team",
        limits=(
            LimitScope("key", f"{prefix}-key", rpm=10**9, tpm=10**12, max_parallel_requests=10**6),
            LimitScope("team", f"{prefix}-team", rpm=10**9, tpm=10**12),
            LimitScope("key_model", f"{prefix}-key:m", rpm=10**9),
        ),
    )


async def time_us(fn, n: int, concurrency: int = 1) -> tuple[float, float]:
    """(wall µs, this process's CPU µs) per call of ``fn``, ``concurrency`` calls in flight."""

    async def worker(k: int) -> None:
        for _ in range(k):
            await fn()

    await worker(min(200, n))
    t, c = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker(n // concurrency) for _ in range(concurrency)))
    done = (n // concurrency) * concurrency
    return (time.perf_counter() - t) / done * 1e6, (time.process_time() - c) / done * 1e6


async def in_process(redis_url: str, n: int) -> None:
    prefix = f"sybench-{uuid.uuid4().hex[:8]}"
    pool = RedisPool(redis_url, socket_timeout=1.0, connect_timeout=1.0)
    p = principal(prefix)
    settings = LimitSettings(key_prefix=prefix, rpm=10**9)
    usage = Usage(10, 20)

    def admit_settle(lim):
        async def go() -> None:
            adm = await lim.admit(p, "m", 30)
            await adm.settle(usage)

        return go

    null = await time_us(admit_settle(NullLimiter()), n)
    redis_lim = RedisLimiter(settings, pool=pool)
    red = await time_us(admit_settle(redis_lim), n)
    red16 = await time_us(admit_settle(redis_lim), n, concurrency=16)
    await redis_lim.drain()
    mem = await time_us(admit_settle(MemoryLimiter(settings)), n)
    print("limiter admit+settle, 4 scopes (key, team, key's model, global), per request:")
    print(f"  redis, sequential       wall {red[0]:7.1f} us   CPU {red[1]:6.1f} us")
    print(f"  redis, 16 concurrent    wall {red16[0]:7.1f} us   CPU {red16[1]:6.1f} us  (auto-pipelined)")
    print(f"  in-process              wall {mem[0]:7.1f} us   CPU {mem[1]:6.1f} us")
    print(f"  null stage (peer)       wall {null[0]:7.1f} us   CPU {null[1]:6.1f} us")
    await redis_lim.close()

    cache = ResponseCacheService(CacheSettings(enabled=True, key_prefix=prefix), pool)
    i = 0

    async def lookup_miss() -> None:
        nonlocal i
        i += 1
        await cache.lookup(cache.plan(p, {**BODY, "seed": i}))

    miss = await time_us(lookup_miss, n)
    plan = cache.plan(p, BODY)
    cache.store(plan, b'{"id":"x","choices":[]}' * 20)
    await cache.drain()

    async def lookup_hit() -> None:
        await cache.lookup(cache.plan(p, BODY))

    hit = await time_us(lookup_hit, n)
    print("cache plan+lookup, per request:")
    print(f"  miss (Redis GET)        wall {miss[0]:7.1f} us   CPU {miss[1]:6.1f} us")
    print(f"  hit (in-process LRU)    wall {hit[0]:7.1f} us   CPU {hit[1]:6.1f} us")
    await cache.close()
    await pool.close()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def load(base: str, key: str, n: int, concurrency: int, body_for) -> tuple[float, int]:
    """Returns (wall seconds, non-200 count)."""
    sem = asyncio.Semaphore(concurrency)
    bad = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits, headers=headers) as client:

        async def one(i: int) -> None:
            nonlocal bad
            async with sem:
                r = await client.post("/v1/chat/completions", json=body_for(i))
                bad += r.status_code != 200

        t = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return time.perf_counter() - t, bad


def gateway_config(fake: FakeOpenAI, redis_url: str, prefix: str, on: bool) -> dict:
    cfg: dict = {
        "model_list": [
            {"model_name": "m", "params": {"model": "openai/m", "api_base": fake.base_url, "api_key": "k"}}
        ],
        "general_settings": {"master_key": MASTER},
    }
    if on:
        cfg["general_settings"]["redis_url"] = redis_url
        cfg["limit_settings"] = {
            "key_prefix": prefix,
            "rpm": 10**9,
            "model_limits": {"m": {"rpm": 10**9, "tpm": 10**12}},
        }
        cfg["cache_settings"] = {"enabled": True, "key_prefix": prefix}
    else:
        cfg["limit_settings"] = {"enabled": False}
    return cfg


def virtual_key(base: str, on: bool) -> str:
    """A virtual key (in a team); with limits on, both the key and the team carry RPM/TPM/parallel."""
    admin = {"authorization": f"Bearer {MASTER}"}
    limits = {"rpm_limit": 10**9, "tpm_limit": 2 * 10**9, "max_parallel_requests": 10**6} if on else {}
    team = httpx.post(f"{base}/team/new", json={"team_alias": "bench", **limits}, headers=admin, timeout=30)
    assert team.status_code == 200, team.text
    body = {"team_id": team.json()["team_id"], **limits}
    if on:
        body["model_rpm_limit"] = {"m": 10**9}
    key = httpx.post(f"{base}/key/generate", json=body, headers=admin, timeout=30)
    assert key.status_code == 200, key.text
    return str(key.json()["key"])


async def through_gateway(redis_url: str, n: int, concurrency: int) -> None:
    prefix = f"sybench-{uuid.uuid4().hex[:8]}"
    results: dict[str, float] = {}
    with FakeOpenAI(Behavior(content="Hi! How can I help you today?")) as fake:
        for label, on in (("off", False), ("on", True)):
            with gateway_process(gateway_config(fake, redis_url, prefix, on), ready_timeout=120) as gw:
                try:
                    key = virtual_key(gw.base_url, on)
                except AssertionError:
                    print(gw.logs()[-4000:])
                    raise
                await load(gw.base_url, key, 200, concurrency, lambda i: {**BODY, "seed": -i})  # warm up
                cpu0 = cpu_seconds(gw.process.pid)
                wall, bad = await load(gw.base_url, key, n, concurrency, lambda i: {**BODY, "seed": i})
                cpu = cpu_seconds(gw.process.pid) - cpu0
                rps, per_core = n / wall, n / max(cpu, 1e-9)
                results[label] = per_core
                print(
                    f"gateway, virtual key, limits+cache {label:3s} (cache misses): {rps:6.0f} req/s wall, "
                    f"{per_core:6.0f} req/s per gateway core ({cpu:.2f} CPU s)"
                    + (f"  non-200: {bad}" if bad else "")
                )
                if on:
                    await hit_latency(gw.base_url, key, gw.process.pid)
    print(f"ratio limits+cache on / off (same run): {results['on'] / results['off']:.2f}")
    print(
        f"ratio limits+cache on / LiteLLM ({LITELLM_RPS_PER_CORE:.0f} req/s/core): "
        f"{results['on'] / LITELLM_RPS_PER_CORE:.1f}x   (bar: >= 6x)"
    )


class RawClient:
    """One keep-alive HTTP/1.1 connection with prebuilt requests.

    httpx's own per-request cost (~0.5 ms of Python here) would dominate a sub-millisecond
    measurement, so latency is timed with the leanest client that still speaks real HTTP.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, base: str) -> RawClient:
        host, port = base.removeprefix("http://").split(":")
        return cls(*await asyncio.open_connection(host, int(port)))

    async def send(self, request: bytes) -> tuple[int, bytes]:
        """Send one request; return (status, lowercased head). Bodies here carry content-length."""
        self.writer.write(request)
        head = (await self.reader.readuntil(b"\r\n\r\n")).lower()
        pos = head.find(b"content-length:")
        await self.reader.readexactly(int(head[pos + 15 : head.find(b"\r\n", pos)]))
        return int(head[9:12]), head

    def close(self) -> None:
        self.writer.close()


def raw_request(method: str, path: str, key: str, body: dict | None = None) -> bytes:
    payload = orjson.dumps(body) if body is not None else b""
    head = (
        f"{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {key}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


async def hit_latency(base: str, key: str, pid: int, n: int = 1000) -> None:
    """Cache-hit latency at concurrency 1, next to the same client's floor: GET /health/liveliness."""
    client = await RawClient.connect(base)
    try:
        chat = raw_request("POST", "/v1/chat/completions", key, BODY)
        status, _ = await client.send(chat)
        assert status == 200, status
        await asyncio.sleep(0.2)
        floor, lat = [], []
        cpu0 = cpu_seconds(pid)
        for _ in range(n):
            t = time.perf_counter()
            status, head = await client.send(chat)
            lat.append(time.perf_counter() - t)
            assert status == 200 and b"x-switchyard-cache: hit" in head, head
        cpu_per_hit = (cpu_seconds(pid) - cpu0) / n * 1e6
        probe = raw_request("GET", "/health/liveliness", key)
        for _ in range(n):
            t = time.perf_counter()
            await client.send(probe)
            floor.append(time.perf_counter() - t)
    finally:
        client.close()
    lat.sort()
    p50, p99 = statistics.median(lat) * 1e3, lat[int(len(lat) * 0.99)] * 1e3
    print(
        f"cache hit end to end, concurrency 1: p50 {p50:.3f} ms  p99 {p99:.3f} ms  "
        f"(bar: p50 < 1 ms; this client's floor, GET /health/liveliness p50 "
        f"{statistics.median(floor) * 1e3:.3f} ms); gateway CPU per hit {cpu_per_hit:.0f} us"
    )


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args()
    own = None
    if _ping(SHARED_HOST, SHARED_PORT):
        redis_url = f"redis://{SHARED_HOST}:{SHARED_PORT}/0"
    else:
        own = RedisServer().start()
        redis_url = own.url
    try:
        await in_process(redis_url, min(args.n, 5000))
        await through_gateway(redis_url, args.n, args.concurrency)
    finally:
        if own is not None:
            own.close()


if __name__ == "__main__":
    asyncio.run(main())
