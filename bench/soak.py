"""Soak: N minutes at a fixed request rate through the gateway's full path, then an exact spend check.

What runs (each in its own process): a fake OpenAI upstream (``tests/support/fake_openai.py``),
``switchyard serve`` with a real Postgres (a fresh throwaway database), a private Redis (limits and
the response cache shared through it), limits on (a virtual key with RPM/TPM limits well above the
load), spend accounting on (token prices configured), and this load generator. Every prompt is
unique, so every request misses the cache and reaches the upstream.

Load is open-loop: request i is due at ``start + i / rate`` whether or not earlier ones finished,
and its latency counts from that due time (a stalled gateway shows up as latency, not as a slower
generator). Each report interval (default one minute) prints throughput, p50/p99 latency, errors
(counted by kind: ``http <status> <error.code>`` from the gateway's OpenAI-shaped body, or the
client-side exception's name) and the gateway's RSS. At the end, the spend check: the
``spend_logs`` rows of the soak's key must be exactly the requests answered 200 (same
``x-request-id`` set, no duplicates, no extras), and the key's ``spend`` the sum of those rows.

The bar: zero errors, RSS growth under 10% (from the end of the first interval, once warm, to the
end), spend exact. The exit status is 0 when it is met.

Maximum rate: ``--find-max`` runs closed-loop at a fixed concurrency for ``--max-seconds`` (with
its own key) and prints the completed requests per second. ``--rate-fraction F`` measures that
first, then soaks at F times it; ``--rate R`` soaks at R req/s. Everything shares this machine's
cores (no pinning), so the maximum is the whole box's, load generator included.

    .venv/bin/python bench/soak.py                           # max first, then 10 min at 80% of it
    .venv/bin/python bench/soak.py --minutes 1 --rate 100 --report-s 15
    .venv/bin/python bench/soak.py --find-max
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.keys.tokens import hash_key
from tests.support.gateway_process import GatewayProcess, gateway_process
from tests.support.postgres import fresh_database, postgres_server
from tests.support.redis_server import RedisServer

REPO = Path(__file__).resolve().parents[1]
MASTER_KEY = "sk-soak-master"
MODEL = "soak"
RSS_GROWTH_BAR = 0.10


# --------------------------------------------------------------------------- the upstream process


def run_upstream(port_file: Path) -> None:
    """The fake upstream, in this process until killed; its request log is emptied as it goes."""
    from tests.support.fake_openai import FakeOpenAI

    fake = FakeOpenAI().start()
    port_file.write_text(str(fake.port))
    while True:
        time.sleep(2)
        with fake._lock:  # it records every request; a soak would grow it without bound
            fake.requests.clear()


def start_upstream(tmp: Path, stack: ExitStack) -> tuple[str, int]:
    """The upstream's API base and pid."""
    port_file = tmp / "upstream.port"
    log = open(tmp / "upstream.log", "wb")  # closed by the stack
    stack.callback(log.close)
    proc = subprocess.Popen(
        [sys.executable, __file__, "--role", "upstream", "--port-file", str(port_file)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
        start_new_session=True,
    )
    stack.callback(_stop, proc)
    deadline = time.monotonic() + 30
    while not port_file.exists() or not port_file.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the fake upstream did not start:\n" + (tmp / "upstream.log").read_text())
        time.sleep(0.05)
    return f"http://127.0.0.1:{port_file.read_text()}/v1", proc.pid


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# --------------------------------------------------------------------------- measurements


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and its descendants (MiB)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry))
    total_kb, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            with open(f"/proc/{p}/status") as f:
                total_kb += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            continue
    return total_kb / 1024


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) ``pid`` has used so far."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def box_busy() -> tuple[float, float]:
    """(busy, total) CPU time of the whole machine so far, from /proc/stat (all cores)."""
    with open("/proc/stat") as f:
        values = [float(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Window:
    """What completed during one report interval."""

    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)


@dataclass
class Totals:
    served: set[str] = field(default_factory=set)  # x-request-id of every 200
    errors: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    sent: int = 0


# --------------------------------------------------------------------------- load


def _body(run: str, i: int) -> bytes:
    # A unique prompt: a cache miss every time, so every request reaches the upstream.
    return orjson.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": f"soak {run} request {i}"}],
            "max_tokens": 16,
        }
    )


class _Unanswered(Exception):
    """A connection failed before any byte of the response arrived (``cause`` says how)."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


class RawClient:
    """HTTP/1.1 keep-alive over plain asyncio streams: the load generator must cost far less CPU than
    the gateway it measures (httpx spends milliseconds per request, more than the gateway itself)."""

    def __init__(self, port: int, timeout: float = 30.0) -> None:
        self.port = port
        self.timeout = timeout
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def post(self, path: str, headers: str, body: bytes) -> tuple[int, bytes]:
        """The response status, and the body when the status is not 200 (a 200's is dropped)."""
        request = (
            f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            f"{headers}content-length: {len(body)}\r\n\r\n"
        ).encode() + body
        while self._idle:
            conn = self._idle.pop()
            if conn[0].at_eof():  # the server closed it while idle (its keep-alive timeout)
                conn[1].close()
                continue
            try:
                return await self._exchange(conn, request)
            except _Unanswered:
                # Closed by the server just as we reused it (a FIN: EOF; or a RST, when our
                # request reached the closed socket: reset or broken pipe), before any byte of a
                # response: the request was not processed. Retry once on a new connection, as
                # every HTTP client does.
                break
        try:
            return await self._exchange(await asyncio.open_connection("127.0.0.1", self.port), request)
        except _Unanswered as exc:
            raise exc.cause from None  # on a fresh connection it is a real error

    async def _exchange(
        self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], request: bytes
    ) -> tuple[int, bytes]:
        reader, writer = conn
        body = b""
        try:
            async with asyncio.timeout(self.timeout):
                try:
                    writer.write(request)
                    # The first byte alone: a failure before it means the request went unanswered.
                    first = await reader.readexactly(1)
                except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError) as exc:
                    raise _Unanswered(exc) from exc
                head = (first + await reader.readuntil(b"\r\n\r\n")).lower()
                status = int(head[9:12])
                keep = status != 200  # an error's body says which error (its code)
                if b"transfer-encoding: chunked" in head:
                    chunks = []
                    while size := int((await reader.readuntil(b"\r\n"))[:-2], 16):
                        chunk = await reader.readexactly(size + 2)
                        if keep:
                            chunks.append(chunk[:-2])
                    await reader.readuntil(b"\r\n")
                    body = b"".join(chunks)
                else:
                    pos = head.find(b"content-length:")
                    length = int(head[pos + 15 : head.find(b"\r\n", pos)]) if pos >= 0 else 0
                    data = await reader.readexactly(length)
                    if keep:
                        body = data
        except BaseException:
            writer.close()
            raise
        if b"connection: close" in head:
            writer.close()
        else:
            self._idle.append(conn)
        return status, body

    def close(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()


def _error_code(body: bytes) -> str:
    """The OpenAI error's ``code`` (else its ``type``) from an error body; "?" if there is none."""
    try:
        error = orjson.loads(body)["error"]
        return str(error.get("code") or error.get("type") or "?")
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return "?"


async def _one(
    client: RawClient,
    key: str,
    run: str,
    i: int,
    due: float,
    window: Window,
    totals: Totals,
) -> None:
    rid = f"soak-{run}-{i}"
    headers = f"authorization: Bearer {key}\r\nx-request-id: {rid}\r\n"
    try:
        status, body = await client.post("/v1/chat/completions", headers, _body(run, i))
        outcome = "ok" if status == 200 else f"http {status} {_error_code(body)}"
    except (OSError, EOFError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
        outcome = type(exc).__name__
    latency = time.monotonic() - due
    if outcome == "ok":
        window.latencies.append(latency)
        totals.latencies.append(latency)
        totals.served.add(rid)
    else:
        window.errors[outcome] += 1
        totals.errors[outcome] += 1


async def find_max(
    gw: GatewayProcess, upstream_pid: int, key: str, seconds: float, concurrency: int
) -> float:
    """Completed requests per second, closed-loop at ``concurrency`` (after a 3 s warm-up)."""
    run = uuid.uuid4().hex[:8]
    totals, window = Totals(), Window()
    counter = iter(range(10**12))
    client = RawClient(gw.port)
    try:

        async def worker(until: float) -> None:
            while time.monotonic() < until:
                await _one(client, key, run, next(counter), time.monotonic(), window, totals)

        warm_until = time.monotonic() + 3
        await asyncio.gather(*(worker(warm_until) for _ in range(concurrency)))
        done_before, errors_before = len(totals.served), sum(totals.errors.values())
        measured_from = len(totals.latencies)
        cpu_before = (cpu_seconds(gw.process.pid), cpu_seconds(upstream_pid))
        box_before = box_busy()
        start = time.monotonic()
        await asyncio.gather(*(worker(start + seconds) for _ in range(concurrency)))
        elapsed = time.monotonic() - start
        cpu_after = (cpu_seconds(gw.process.pid), cpu_seconds(upstream_pid))
        box_after = box_busy()
    finally:
        client.close()
    done = len(totals.served) - done_before
    errors = sum(totals.errors.values()) - errors_before
    rate = done / elapsed
    print(
        f"max rate: {rate:.0f} req/s (closed loop, concurrency {concurrency}, {seconds:.0f} s; "
        f"p50 {_pct(totals.latencies[measured_from:], 0.5) * 1000:.1f} ms, errors {errors}; CPU % of a core: "
        f"gateway {(cpu_after[0] - cpu_before[0]) / elapsed * 100:.0f}, "
        f"upstream {(cpu_after[1] - cpu_before[1]) / elapsed * 100:.0f}; whole machine busy "
        f"{(box_after[0] - box_before[0]) / max(1.0, box_after[1] - box_before[1]) * 100:.0f}%)",
        flush=True,
    )
    return rate


async def soak(
    gw: GatewayProcess, upstream_pid: int, key: str, rate: float, minutes: float, report_s: float
) -> tuple[Totals, list[float]]:
    """Open-loop load at ``rate`` for ``minutes``, a line per interval; returns totals and RSS samples.

    CPU columns are percent of one core, so a process near 100 is the bottleneck; ``box %`` is the
    whole machine's (all cores, every process, other users' too).
    """
    run = uuid.uuid4().hex[:8]
    totals = Totals()
    window = Window()
    rss: list[float] = [rss_mb(gw.process.pid)]
    tasks: set[asyncio.Task[None]] = set()
    client = RawClient(gw.port)
    # At most this many in flight (connections); a request waiting here still counts from its due time.
    gate = asyncio.Semaphore(512)

    async def fire(i: int, due: float) -> None:
        async with gate:
            await _one(client, key, run, i, due, window, totals)

    print(f"soak: {rate:.0f} req/s for {minutes:g} min; gateway RSS at start {rss[0]:.1f} MiB", flush=True)
    print(
        f"{'t (s)':>6} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'RSS MiB':>8} "
        f"{'gw CPU%':>8} {'up CPU%':>8} {'box %':>6} {'behind':>6}",
        flush=True,
    )
    try:
        start = time.monotonic()
        end = start + minutes * 60
        next_report = start + report_s
        cpu = (cpu_seconds(gw.process.pid), cpu_seconds(upstream_pid))
        box = box_busy()
        i = 0
        while True:
            now = time.monotonic()
            if now >= next_report:
                rss.append(rss_mb(gw.process.pid))
                w, window = window, Window()
                behind = max(0, int((now - start) * rate) - i)  # due but not yet sent (generator lag)
                p50, p99 = _pct(w.latencies, 0.5) * 1000, _pct(w.latencies, 0.99) * 1000
                was, cpu = cpu, (cpu_seconds(gw.process.pid), cpu_seconds(upstream_pid))
                gw_cpu, up_cpu = ((b - a) / report_s * 100 for a, b in zip(was, cpu, strict=True))
                box_was, box = box, box_busy()
                box_pct = (box[0] - box_was[0]) / max(1.0, box[1] - box_was[1]) * 100
                print(
                    f"{now - start:6.0f} {len(w.latencies) / report_s:7.1f} {p50:8.1f} "
                    f"{p99:8.1f} {sum(w.errors.values()):7d} {rss[-1]:8.1f} {gw_cpu:8.0f} {up_cpu:8.0f} "
                    f"{box_pct:6.0f} {behind:6d}{'  ' + str(dict(w.errors)) if w.errors else ''}",
                    flush=True,
                )
                next_report += report_s
            if now >= end:
                break
            due = start + i / rate
            if due > now:
                await asyncio.sleep(min(due, next_report, end) - now)
                continue
            task = asyncio.get_running_loop().create_task(fire(i, due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        totals.sent = i
        if tasks:
            await asyncio.wait(tasks)
    finally:
        client.close()
    late = window
    if late.latencies or late.errors:
        print(
            f"  (finishing in-flight: {len(late.latencies)} ok, {sum(late.errors.values())} errors)",
            flush=True,
        )
    return totals, rss


# --------------------------------------------------------------------------- spend check


@dataclass
class SpendCheck:
    rows: int
    distinct: int
    missing: int  # answered 200, no success row
    extra: int  # a success row for no 200 we saw
    key_spend: Decimal
    rows_spend: Decimal

    @property
    def exact(self) -> bool:
        return (
            self.rows == self.distinct
            and self.missing == 0
            and self.extra == 0
            and self.key_spend == self.rows_spend
        )


async def check_spend(database_url: str, key: str, served: set[str], wait_s: float = 30.0) -> SpendCheck:
    """Compare the key's spend rows with the requests served, once the gateway has flushed them."""
    conn = await asyncpg.connect(database_url)
    try:
        key_hash = hash_key(key)
        deadline = time.monotonic() + wait_s
        while True:
            count = await conn.fetchval(
                "SELECT count(*) FROM spend_logs WHERE key_hash = $1 AND status = 'success'", key_hash
            )
            if count >= len(served) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(2)  # a late duplicate would land now
        ids = [
            r["request_id"]
            for r in await conn.fetch(
                "SELECT request_id FROM spend_logs WHERE key_hash = $1 AND status = 'success'", key_hash
            )
        ]
        rows_spend = await conn.fetchval(
            "SELECT coalesce(sum(spend), 0) FROM spend_logs WHERE key_hash = $1", key_hash
        )
        key_spend = await conn.fetchval("SELECT spend FROM virtual_keys WHERE token_hash = $1", key_hash)
    finally:
        await conn.close()
    seen = set(ids)
    return SpendCheck(len(ids), len(seen), len(served - seen), len(seen - served), key_spend, rows_spend)


# --------------------------------------------------------------------------- setup


def gateway_config(upstream: str, database_url: str, redis_url: str) -> dict[str, Any]:
    return {
        "model_list": [
            {
                "model_name": MODEL,
                "params": {
                    "model": "openai/soak-upstream",
                    "api_base": upstream,
                    "api_key": "sk-soak-upstream",
                    "input_cost_per_token": 0.000001,
                    "output_cost_per_token": 0.000002,
                },
            }
        ],
        "general_settings": {"master_key": MASTER_KEY, "database_url": database_url, "redis_url": redis_url},
        "limit_settings": {"enabled": True, "key_prefix": f"soak-{uuid.uuid4().hex[:8]}"},
        "cache_settings": {"enabled": True, "key_prefix": f"soak-{uuid.uuid4().hex[:8]}"},
    }


def new_key(gw: GatewayProcess, alias: str) -> str:
    """A virtual key whose limits are checked on every request but never reached by the load."""
    r = httpx.post(
        gw.base_url + "/key/generate",
        json={"key_alias": alias, "rpm_limit": 2_000_000, "tpm_limit": 2_000_000_000, "max_budget": 1e9},
        headers={"authorization": f"Bearer {MASTER_KEY}"},
        timeout=30,
    )
    r.raise_for_status()
    return str(r.json()["key"])


def run(args: argparse.Namespace) -> int:
    import tempfile

    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="switchyard-soak-")))
        server = stack.enter_context(postgres_server())
        database_url = stack.enter_context(fresh_database(server, "switchyard_soak"))
        redis = RedisServer().start()
        stack.callback(redis.close)
        upstream, upstream_pid = start_upstream(tmp, stack)
        gw = stack.enter_context(gateway_process(gateway_config(upstream, database_url, redis.url)))
        print(
            f"gateway pid {gw.process.pid} on {gw.base_url}; Postgres {server.rsplit('@', 1)[-1]}; "
            f"{os.cpu_count()} cores shared by all"
        )

        rate = args.rate
        if rate is None:
            max_rate = asyncio.run(
                find_max(gw, upstream_pid, new_key(gw, "soak-max"), args.max_seconds, args.concurrency)
            )
            if args.find_max:
                return 0
            rate = max_rate * args.rate_fraction
            print(f"soak rate: {args.rate_fraction:g} x {max_rate:.0f} = {rate:.0f} req/s", flush=True)
        key = new_key(gw, "soak")
        totals, rss = asyncio.run(soak(gw, upstream_pid, key, rate, args.minutes, args.report_s))
        check = asyncio.run(check_spend(database_url, key, totals.served))
        if not gw.alive():
            print("the gateway died:\n" + gw.logs()[-3000:])

    errors = sum(totals.errors.values())
    warm = rss[1] if len(rss) > 2 else rss[0]
    growth = (rss[-1] - warm) / warm
    print(
        f"\ntotal: sent {totals.sent}, served {len(totals.served)}, "
        f"errors {errors}{' ' + str(dict(totals.errors)) if errors else ''}; "
        f"p50 {_pct(totals.latencies, 0.5) * 1000:.1f} ms, p99 {_pct(totals.latencies, 0.99) * 1000:.1f} ms"
    )
    print(
        f"RSS: {warm:.1f} MiB after the first interval -> {rss[-1]:.1f} MiB at the end ({growth * 100:+.1f}%)"
    )
    print(
        f"spend: {check.rows} success rows for {len(totals.served)} served ({check.distinct} distinct ids, "
        f"{check.missing} missing, {check.extra} extra); "
        f"key spend {check.key_spend} vs rows {check.rows_spend}: "
        f"{'exact' if check.exact else 'NOT exact'}"
    )
    ok = errors == 0 and growth < RSS_GROWTH_BAR and check.exact and totals.sent > 0
    print(
        f"bar (zero errors, RSS growth < {RSS_GROWTH_BAR:.0%}, spend exact): {'PASS' if ok else 'FAIL'} "
        f"[errors {errors}, RSS {growth * 100:+.1f}%, spend {'exact' if check.exact else 'off'}]"
    )
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="soak duration (default 10)")
    parser.add_argument(
        "--rate", type=float, help="fixed request rate (req/s); default: a fraction of the max"
    )
    parser.add_argument(
        "--rate-fraction", type=float, default=0.8, help="soak at this fraction of the max (0.8)"
    )
    parser.add_argument("--find-max", action="store_true", help="only measure the maximum rate")
    parser.add_argument(
        "--max-seconds", type=float, default=20.0, help="closed-loop run measuring the max (20)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=128, help="closed-loop concurrency for the max (128)"
    )
    parser.add_argument("--report-s", type=float, default=60.0, help="report interval in seconds (60)")
    parser.add_argument("--role", choices=["upstream"], help=argparse.SUPPRESS)
    parser.add_argument("--port-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "upstream":
        run_upstream(args.port_file)
        return
    if args.rate is not None and args.rate <= 0:
        parser.error("--rate must be positive")
    if not 0 < args.rate_fraction <= 1:
        parser.error("--rate-fraction must be in (0, 1]")
    raise SystemExit(run(args))


if __name__ == "__main__":
    main()
