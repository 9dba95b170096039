"""What virtual keys and spend accounting cost per request, and how fast spend logs are written.

Measured against a real Postgres (127.0.0.1:5432 if present, else the embedded one), in a fresh
throwaway database:

- auth, cached key: ``PostgresKeyResolver.resolve`` for a key already in the cache (sha256 + dict).
  Peer: the straightforward design, one primary-key query per request (no cache).
- spend record: ``PostgresSpendSink.record`` (the O(1) enqueue on the request path).
  Peer: synchronous per-request accounting (INSERT the log row + UPDATE key/team spend, one
  transaction per request), what the request would wait for without the queue.
- spend-log rows/s: ``flush()`` of a queue of events in batches (one transaction per batch:
  multi-row insert, aggregated charges, daily upsert). Peer: the same per-request transactions.

The bar: with keys and spend on, the gateway must keep >= 8x LiteLLM's ~100 req/s per core, i.e.
a whole request within 1250 us of CPU; the control plane's share is printed against that budget.

End to end (``--e2e``): ``switchyard serve`` pinned to one core in front of a no-delay fake upstream
(``bench/gateway_overhead.py --role upstream``), non-streaming chat completions at concurrency 16:
req/s per core with a virtual key (auth + spend on), and in local mode (no key; spend still
recorded) as the peer measured in the same run, against the 800 req/s bar.

Run: .venv/bin/python bench/control_plane.py [--n 200000] [--rows 50000] [--e2e [--duration 5]]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.db import open_database
from gateway.keys import store
from gateway.keys.resolver import PostgresKeyResolver
from gateway.keys.tokens import display_name, generate_key, hash_key
from gateway.pipeline import Principal, Usage, UsageEvent
from gateway.spend.sink import PostgresSpendSink
from tests.support.postgres import fresh_database, postgres_server

LITELLM_REQ_S_PER_CORE = 100.0
BAR = 8.0
BUDGET_US = 1e6 / (LITELLM_REQ_S_PER_CORE * BAR)


def _event(principal: Principal, i: int) -> UsageEvent:
    now = time.time()
    return UsageEvent(
        request_id=f"bench-{i}",
        principal=principal,
        model="gpt-4o-mini",
        deployment_id="dep-1",
        provider_model="openai/gpt-4o-mini",
        usage=Usage(120, 40),
        cost=0.0000423,
        status="success",
        cache_hit=False,
        started_at=now,
        ended_at=now,
        stream=False,
    )


async def run(url: str, n: int, rows: int) -> None:
    db = await open_database(url, max_size=4)
    try:
        async with db.pool.acquire() as conn:
            await store.insert_team(conn, {"id": "bench-team"})
            keys = []
            for i in range(8):
                key = generate_key()
                await store.insert_key(
                    conn,
                    {
                        "token_hash": hash_key(key),
                        "key_name": display_name(key),
                        "team_id": "bench-team",
                        "rpm_limit": 1000,
                        "max_budget": 1e9,
                        "key_alias": f"bench-{i}",
                    },
                )
                keys.append(key)
        resolver = PostgresKeyResolver(db.pool, ttl=3600)
        principals = [await resolver.resolve(k) for k in keys]

        # auth, cached
        resolve = resolver.resolve
        t0 = time.perf_counter()
        for i in range(n):
            await resolve(keys[i & 7])
        auth_us = (time.perf_counter() - t0) / n * 1e6
        # peer: a query per request
        m = min(n, 5000)
        t0 = time.perf_counter()
        for i in range(m):
            resolver.invalidate(hash_key(keys[i & 7]))
            await resolve(keys[i & 7])
        peer_auth_us = (time.perf_counter() - t0) / m * 1e6

        # spend record (enqueue only)
        sink = PostgresSpendSink(db.pool, batch_size=1000, max_queue=10 * n)
        events = [_event(principals[i & 7], i) for i in range(n)]  # built outside the timed loop
        record = sink.record
        t0 = time.perf_counter()
        for e in events:
            record(e)
        record_us = (time.perf_counter() - t0) / n * 1e6
        sink._queue.clear()

        # rows/s, batched
        for i in range(rows):
            sink.record(_event(principals[i & 7], i))
        t0, c0 = time.perf_counter(), time.process_time()
        written = await sink.flush()
        batched_rows_s = written / (time.perf_counter() - t0)
        flush_cpu_us = (time.process_time() - c0) / written * 1e6

        # peer: one transaction per request
        p = min(rows, 1000)
        t0 = time.perf_counter()
        async with db.pool.acquire() as conn:
            for i in range(p):
                e = _event(principals[i & 7], i)
                async with conn.transaction():
                    await conn.execute(
                        "INSERT INTO spend_logs (id, request_id, key_hash, team_id, model, spend, status, "
                        "start_time, end_time) VALUES ($1, $2, $3, $4, $5, $6, 'success', now(), now())",
                        f"peer-{i}",
                        e.request_id,
                        e.principal.key_hash,
                        e.principal.team_id,
                        e.model,
                        e.cost,
                    )
                    await conn.execute(
                        "UPDATE virtual_keys SET spend = spend + $2 WHERE token_hash = $1",
                        e.principal.key_hash,
                        e.cost,
                    )
                    await conn.execute(
                        "UPDATE teams SET spend = spend + $2 WHERE id = $1", e.principal.team_id, e.cost
                    )
        peer_rows_s = p / (time.perf_counter() - t0)
        peer_record_us = 1e6 / peer_rows_s
        flush_us_per_row = 1e6 / batched_rows_s

        print(
            f"auth, cached key:        {auth_us:8.2f} us/request   peer (query per request) "
            f"{peer_auth_us:8.1f} us   ratio ours/peer {auth_us / peer_auth_us:.4f}"
        )
        print(
            f"spend record (enqueue):  {record_us:8.2f} us/request   peer (sync per-request txn) "
            f"{peer_record_us:8.1f} us   ratio ours/peer {record_us / peer_record_us:.4f}"
        )
        print(
            f"spend-log rows written:  {batched_rows_s:8.0f} rows/s       peer (txn per row) "
            f"{peer_rows_s:8.0f} rows/s   ratio ours/peer {batched_rows_s / peer_rows_s:.1f}x "
            f"({flush_us_per_row:.1f} us/row in the background)"
        )
        print(
            f"flush CPU in this process (the gateway's share of background writes): {flush_cpu_us:.1f} us/row"
        )
        hot = auth_us + record_us
        print(
            f"request-path control plane cost: {hot:.2f} us of a {BUDGET_US:.0f} us/request budget "
            f"(8x LiteLLM's {LITELLM_REQ_S_PER_CORE:.0f} req/s/core) = {hot / BUDGET_US * 100:.2f}%; "
            f"with the gateway's CPU for background writes {hot + flush_cpu_us:.1f} us = "
            f"{(hot + flush_cpu_us) / BUDGET_US * 100:.1f}%"
        )
        assert resolver.db_lookups <= 8 + m
    finally:
        await db.close()


# ---- end to end -------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _spawn(cmd: list[str], core: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
            start_new_session=True,
            preexec_fn=lambda: os.sched_setaffinity(0, {core}),
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _load(port: int, key: str | None, concurrency: int, duration: float) -> tuple[int, int]:
    body = json.dumps({"model": "bench", "messages": [{"role": "user", "content": "hi"}]}).encode()
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"{auth}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    done = errors = 0
    deadline = time.monotonic() + duration

    async def worker() -> None:
        nonlocal done, errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.monotonic() < deadline:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            if head.startswith(b"HTTP/1.1 200"):
                done += 1
            else:
                errors += 1
        writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done, errors


def _wait_ready(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("switchyard exited during start")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/readiness", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError("switchyard did not become ready")


def e2e(duration: float, concurrency: int) -> None:
    cores = sorted(os.sched_getaffinity(0))
    gateway_core = cores[-1]
    tmp = Path(tempfile.mkdtemp(prefix="sy-cp-bench-"))
    up_port = _free_port()
    upstream = _spawn(
        [
            sys.executable,
            str(REPO / "bench" / "gateway_overhead.py"),
            "--role",
            "upstream",
            "--port",
            str(up_port),
        ],
        cores[0],
        {},
        tmp / "upstream.log",
    )
    results: dict[str, float] = {}
    by_cpu: dict[str, float] = {}
    try:
        time.sleep(1.0)
        for mode in ("local", "virtual key"):
            master = "sk-bench-master" if mode == "virtual key" else None
            config = (
                "model_list:\n  - model_name: bench\n    litellm_params:\n"
                "      model: openai/bench-upstream\n"
                f"      api_base: http://127.0.0.1:{up_port}/v1\n      api_key: sk-fake\n"
                "      input_cost_per_token: 0.000001\n      output_cost_per_token: 0.000002\n"
                f"general_settings:\n  data_dir: {tmp / 'data'}\n"
                + (f"  master_key: {master}\n" if master else "")
            )
            (tmp / "config.yaml").write_text(config)
            port = _free_port()
            proc = _spawn(
                [
                    str(REPO / ".venv" / "bin" / "switchyard"),
                    "serve",
                    "--config",
                    str(tmp / "config.yaml"),
                    "--port",
                    str(port),
                    "--log-level",
                    "warning",
                ],
                gateway_core,
                {"DATABASE_URL": ""},
                tmp / "gateway.log",
            )
            try:
                _wait_ready(port, proc)
                key = None
                if master:
                    made = httpx.post(
                        f"http://127.0.0.1:{port}/key/generate",
                        json={"team_id": None},
                        headers={"Authorization": f"Bearer {master}"},
                        timeout=30,
                    )
                    key = made.json()["key"]
                asyncio.run(_load(port, key, concurrency, min(1.0, duration)))  # warm-up
                cpu0 = _cpu_seconds(proc.pid)
                done, errors = asyncio.run(_load(port, key, concurrency, duration))
                cpu_ms = (_cpu_seconds(proc.pid) - cpu0) * 1000 / max(done, 1)
                results[mode] = done / duration
                by_cpu[mode] = 1000 / cpu_ms
                print(
                    f"  {mode:12s} {done / duration:8.0f} req/s on one core  cpu {cpu_ms:.3f} ms/req "
                    f"(= {1000 / cpu_ms:.0f} req/s per fully used core)  errors {errors}",
                    flush=True,
                )
            finally:
                _stop(proc)
    finally:
        _stop(upstream)
        shutil.rmtree(tmp, ignore_errors=True)
    ours, peer = results["virtual key"], results["local"]
    bar = LITELLM_REQ_S_PER_CORE * BAR
    print(
        f"virtual key + spend / local mode: req/s x{ours / peer:.3f}, CPU-bound rate "
        f"x{by_cpu['virtual key'] / by_cpu['local']:.3f}\n"
        f"vs the bar ({bar:.0f} req/s/core = 8x LiteLLM's {LITELLM_REQ_S_PER_CORE:.0f}): measured req/s "
        f"x{ours / bar:.2f}, CPU-bound rate x{by_cpu['virtual key'] / bar:.2f} (measured req/s is capped "
        "when the load generator, upstream and Postgres share the machine's cores)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--e2e", action="store_true", help="also measure a real gateway end to end")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    with postgres_server() as server, fresh_database(server, prefix="switchyard_bench") as url:
        asyncio.run(run(url, args.n, args.rows))
    if args.e2e:
        print(f"end to end (non-streaming, concurrency {args.concurrency}):")
        e2e(args.duration, args.concurrency)


if __name__ == "__main__":
    main()
