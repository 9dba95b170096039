"""Scale-out numbers: what N gateway instances on one Postgres and one Redis ask of each, per request.

What runs: N ``switchyard serve`` processes (one worker each), a fake OpenAI upstream in this
process, a private Redis (nothing else talks to it, so its counters are the gateways' alone) and a
fresh database on the test Postgres. The load is the full path: K virtual keys with RPM and TPM
limits (well above the load), the response cache on, every prompt unique (every request misses the
cache and reaches the upstream), spend priced and written; requests round-robin over the instances
at a fixed concurrency.

Measured over the run (deltas, warm-up excluded):

- Redis: commands, round trips and server CPU per request (``INFO`` total_commands_processed; the gateways'
  ``switchyard_redis_roundtrip_seconds_count``), client connections per instance, and memory per
  limit scope (``MEMORY USAGE`` of a virtual key's window hash and lease set) and per cached answer.
- Postgres: spend rows per write transaction (rows / ``switchyard_spend_batch_write_seconds_count``),
  transactions per request (``pg_stat_database.xact_commit`` of the database), connections.
- The cluster's req/s on this machine (everything shares its cores: a floor, not a capacity).

    .venv/bin/python bench/scale_out.py [--instances 3] [--requests 3000] [--concurrency 48]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import re
import sys
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

import asyncpg
import httpx
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.fake_openai import FakeOpenAI
from tests.support.gateway_app import gateway_config, new_key
from tests.support.gateway_process import GatewayProcess, gateway_process
from tests.support.postgres import fresh_database, postgres_server
from tests.support.redis_server import RedisServer

MODEL = "gpt-4o-mini"
LIMITS_PREFIX = "bench-lim"
CACHE_PREFIX = "bench-cache"


def metric_sum(gws: list[GatewayProcess], name: str, **labels: str) -> float:
    """``name`` summed over every instance's page (samples whose labels include ``labels``)."""
    total = 0.0
    for gw in gws:
        for line in httpx.get(gw.base_url + "/metrics", timeout=10).text.splitlines():
            match = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
            if match is None or match.group(1) != name:
                continue
            found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
            if all(found.get(k) == v for k, v in labels.items()):
                total += float(match.group(3))
    return total


async def load(gws: list[GatewayProcess], keys: list[str], total: int, concurrency: int) -> float:
    """Send ``total`` unique requests; returns the seconds they took. Every answer must be 200."""
    targets, who = itertools.cycle(gws), itertools.cycle(keys)
    gate = asyncio.Semaphore(concurrency)
    run = uuid.uuid4().hex[:8]

    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=concurrency)) as client:

        async def one(i: int, gw: GatewayProcess, key: str) -> None:
            body = {
                "model": MODEL,
                "messages": [{"role": "user", "content": f"{run} {i}"}],
                "max_tokens": 8,
                "temperature": 0,  # cacheable (sampled answers are not cached by default)
            }
            async with gate:
                reply = await client.post(
                    gw.base_url + "/v1/chat/completions",
                    json=body,
                    headers={"Authorization": f"Bearer {key}"},
                )
            assert reply.status_code == 200, reply.text

        started = time.monotonic()
        await asyncio.gather(*(one(i, next(targets), next(who)) for i in range(total)))
        return time.monotonic() - started


async def postgres_state(database_url: str) -> tuple[int, int]:
    """(committed transactions of the database, its connections now)."""
    conn = await asyncpg.connect(database_url)
    try:
        name = database_url.rsplit("/", 1)[1]
        commits = await conn.fetchval("SELECT xact_commit FROM pg_stat_database WHERE datname = $1", name)
        connections = await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = $1", name)
        return int(commits), int(connections) - 1  # not this one
    finally:
        await conn.close()


def redis_cpu(r: redis.Redis) -> float:
    """Seconds of CPU the Redis server has used (user + system)."""
    info = r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def redis_memory(r: redis.Redis, pattern: str) -> tuple[int, int]:
    """(keys matching ``pattern``, their total ``MEMORY USAGE`` bytes)."""
    keys = list(r.scan_iter(match=pattern, count=1000))
    return len(keys), sum(int(r.memory_usage(k) or 0) for k in keys)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=48)
    parser.add_argument("--keys", type=int, default=20, help="virtual keys the load is spread over")
    args = parser.parse_args()

    with ExitStack() as stack:
        database_url = stack.enter_context(fresh_database(stack.enter_context(postgres_server()), "sy_scale"))
        redis_server = RedisServer().start()
        stack.callback(redis_server.close)
        fake = stack.enter_context(FakeOpenAI())
        config = gateway_config(fake.base_url, models=[MODEL], cache=True, redis_url=redis_server.url)
        config["limit_settings"]["key_prefix"] = LIMITS_PREFIX
        config["cache_settings"]["key_prefix"] = CACHE_PREFIX
        config["general_settings"]["redis_timeout_s"] = 2.0
        config["general_settings"]["spend_flush_interval_s"] = 1.0  # the default: batches as in production
        env = {"DATABASE_URL": database_url}
        gws = [stack.enter_context(gateway_process(config, env=env)) for _ in range(args.instances)]
        created = [new_key(gws[0], rpm_limit=10**6, tpm_limit=10**9) for _ in range(args.keys)]
        keys = [c["key"] for c in created]
        r = redis.Redis.from_url(redis_server.url)

        asyncio.run(
            load(gws, keys, min(300, args.requests), args.concurrency)
        )  # warm: keys cached, pools open
        time.sleep(2.5)  # the warm-up's spend written
        commands0 = int(r.info("stats")["total_commands_processed"])
        cpu0 = redis_cpu(r)
        trips0 = metric_sum(gws, "switchyard_redis_roundtrip_seconds_count")
        batches0 = metric_sum(gws, "switchyard_spend_batch_write_seconds_count")
        commits0, _ = asyncio.run(postgres_state(database_url))

        seconds = asyncio.run(load(gws, keys, args.requests, args.concurrency))
        connections_redis = int(r.info("clients")["connected_clients"]) - 1  # not this client
        _, connections_pg = asyncio.run(postgres_state(database_url))
        time.sleep(2.5)  # the run's spend written
        commands = int(r.info("stats")["total_commands_processed"]) - commands0 - 3  # our INFO calls
        cpu = redis_cpu(r) - cpu0
        trips = metric_sum(gws, "switchyard_redis_roundtrip_seconds_count") - trips0
        batches = metric_sum(gws, "switchyard_spend_batch_write_seconds_count") - batches0
        commits = asyncio.run(postgres_state(database_url))[0] - commits0

        token = created[0]["token"]
        scope_keys, scope_bytes = redis_memory(r, f"{LIMITS_PREFIX}:{{key:{token}}}:*")
        cache_keys, cache_bytes = redis_memory(r, f"{CACHE_PREFIX}:c:*")

    n = args.requests
    report = {
        "instances": args.instances,
        "requests": n,
        "concurrency": args.concurrency,
        "req_per_s": round(n / seconds, 1),
        "redis_commands_per_request": round(commands / n, 2),
        "redis_round_trips_per_request": round(trips / n, 2),
        "redis_cpu_ms_per_request": round(cpu * 1000 / n, 3),
        "redis_connections_per_instance": round(connections_redis / args.instances, 1),
        "redis_bytes_per_limited_key": scope_bytes,
        "redis_keys_per_limited_key": scope_keys,
        "redis_bytes_per_cached_answer": round(cache_bytes / cache_keys) if cache_keys else 0,
        "postgres_spend_rows_per_write_transaction": round(n / batches, 1) if batches else None,
        "postgres_transactions_per_request": round(commits / n, 4),
        "postgres_transactions_per_instance_second": round(commits / seconds / args.instances, 1),
        "postgres_connections_per_instance": round(connections_pg / args.instances, 1),
    }
    for name, value in report.items():
        print(f"{name:45} {value}")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
