"""Gateway overhead: Switchyard vs LiteLLM's proxy vs going direct, on one pinned core each.

Three processes per measurement, pinned to cores so they do not steal from each other:

- a fake OpenAI upstream with no delay (raw asyncio protocol, precomputed responses),
- the target: nothing (direct to the upstream), ``switchyard serve``, or ``litellm --config``,
  pinned to ONE core (so req/s is req/s per core),
- a load generator (raw asyncio sockets, HTTP/1.1 keep-alive, fixed concurrency, each request
  timed with a monotonic clock).

For non-streaming and streaming (20 chunks) requests at concurrency 1/16/64 it prints req/s,
p50/p99 latency added over going direct, CPU ms per request of the gateway process (from
/proc/<pid>/stat), RSS, time from process start to the first successful chat completion, and
the Switchyard/LiteLLM ratios.

    .venv/bin/python bench/gateway_overhead.py [--quick] [--skip-litellm]

LiteLLM is installed on first use into its own venv (bench/.peers/litellm, pinned version).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PEERS = REPO / "bench" / ".peers"
LITELLM_VERSION = "1.108.7"
LITELLM_VENV = PEERS / "litellm"
STREAM_CHUNKS = 20
MODEL = "bench"
# Both gateways authenticate every request with a master key (LiteLLM refuses to start without one).
BENCH_KEY = "sk-bench-" + "5" * 56

# --------------------------------------------------------------------------- fake upstream


def _upstream_responses() -> dict[str, bytes]:
    """Precomputed HTTP responses: non-streaming JSON, and SSE with/without the usage chunk."""
    completion = {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "bench-upstream",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello! " * 10},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 20, "total_tokens": 32},
    }
    body = json.dumps(completion, separators=(",", ":")).encode()
    plain = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )

    def sse(include_usage: bool) -> bytes:
        def chunk(delta: dict, finish: str | None, choices: bool = True) -> bytes:
            obj: dict = {
                "id": "chatcmpl-bench",
                "object": "chat.completion.chunk",
                "created": 1_700_000_000,
                "model": "bench-upstream",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if choices else [],
            }
            if include_usage:
                obj["usage"] = None
            return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"

        events = [chunk({"role": "assistant", "content": ""}, None)]
        events += [chunk({"content": f"tok{i} "}, None) for i in range(STREAM_CHUNKS)]
        events.append(chunk({}, "stop"))
        if include_usage:
            usage = {
                "id": "chatcmpl-bench",
                "object": "chat.completion.chunk",
                "created": 1_700_000_000,
                "model": "bench-upstream",
                "choices": [],
                "usage": {"prompt_tokens": 12, "completion_tokens": 20, "total_tokens": 32},
            }
            events.append(b"data: " + json.dumps(usage, separators=(",", ":")).encode() + b"\n\n")
        events.append(b"data: [DONE]\n\n")
        out = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        for e in events:
            out += f"{len(e):x}\r\n".encode() + e + b"\r\n"
        return out + b"0\r\n\r\n"

    return {"plain": plain, "sse": sse(False), "sse_usage": sse(True)}


class _UpstreamProtocol(asyncio.Protocol):
    responses = _upstream_responses()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            length = 0
            pos = head.find(b"content-length:")
            if pos >= 0:
                line_end = head.find(b"\r\n", pos)
                length = int(head[pos + 15 : line_end if line_end > 0 else None])
            total = end + 4 + length
            if len(self.buf) < total:
                return
            body = self.buf[end + 4 : total]
            self.buf = self.buf[total:]
            if b'"stream":true' in body or b'"stream": true' in body:
                usage = b'"include_usage":true' in body or b'"include_usage": true' in body
                self.transport.write(self.responses["sse_usage" if usage else "sse"])  # type: ignore[attr-defined]
            else:
                self.transport.write(self.responses["plain"])  # type: ignore[attr-defined]


def run_upstream(port: int) -> None:
    _use_uvloop()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_UpstreamProtocol, "127.0.0.1", port, backlog=4096)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# --------------------------------------------------------------------------- load generator


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    pos = lower.find(b"content-length:")
    if pos >= 0:
        line_end = lower.find(b"\r\n", pos)
        await reader.readexactly(int(lower[pos + 15 : line_end]))
    elif b"transfer-encoding: chunked" in lower:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            await reader.readexactly(size + 2)
    else:
        await reader.read()  # until close
    return status


def _request(port: int, stream: bool, key: str = BENCH_KEY, nonce: str = "") -> bytes:
    body: dict = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"Hello, how are you today?{nonce}"}],
        "max_tokens": 20,
    }
    if stream:
        body["stream"] = True
    raw = json.dumps(body).encode()
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:"
        + str(port).encode()
        + b"\r\ncontent-type: application/json\r\nauthorization: Bearer "
        + key.encode()
        + b"\r\ncontent-length: "
        + str(len(raw)).encode()
        + b"\r\n\r\n"
        + raw
    )


async def _load(
    port: int, stream: bool, concurrency: int, duration: float, key: str = BENCH_KEY, unique: bool = False
) -> dict:
    """Fixed-concurrency keep-alive load; ``unique`` makes every request distinct (all cache misses)."""
    request = _request(port, stream, key)

    def request_for(worker: int, n: int) -> bytes:
        return _request(port, stream, key, f" {os.getpid()}-{worker}-{n}") if unique else request

    return await load_requests(port, request_for, concurrency, duration)


async def load_requests(
    port: int, request_for: Callable[[int, int], bytes], concurrency: int, duration: float
) -> dict:
    """``concurrency`` keep-alive connections, each sending ``request_for(worker, n)`` (raw HTTP/1.1
    bytes) and reading the whole answer before the next, for ``duration`` seconds; 200s are timed."""
    latencies: list[int] = []
    errors = 0
    deadline = time.monotonic() + duration

    async def worker(w: int) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        n = 0
        try:
            while time.monotonic() < deadline:
                n += 1
                request = request_for(w, n)
                t0 = time.perf_counter_ns()
                writer.write(request)
                status = await _read_response(reader)
                if status == 200:
                    latencies.append(time.perf_counter_ns() - t0)
                else:
                    errors += 1
        finally:
            writer.close()

    started = time.monotonic()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    elapsed = time.monotonic() - started
    latencies.sort()

    def pct(p: float) -> float:
        if not latencies:
            return float("nan")
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] / 1e6

    return {
        "requests": len(latencies),
        "errors": errors,
        "elapsed_s": elapsed,
        "rps": len(latencies) / elapsed if elapsed else 0.0,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
    }


def run_loadgen(port: int, stream: bool, concurrency: int, duration: float, key: str, unique: bool) -> None:
    _use_uvloop()
    result = asyncio.run(_load(port, stream, concurrency, duration, key, unique))
    # The load generator's own CPU, so a caller can tell how much of the machine it took.
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu_s"] = usage.ru_utime + usage.ru_stime
    print(json.dumps(result))


# --------------------------------------------------------------------------- orchestration


def _use_uvloop() -> None:
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pinned(cmd: list[str], core: int) -> list[str]:
    if shutil.which("taskset"):
        return ["taskset", "-c", str(core), *cmd]
    return cmd


def _spawn(
    cmd: list[str], core: int, env: dict[str, str | None] | None = None, log: Path | None = None
) -> subprocess.Popen:
    out = open(log, "wb") if log else subprocess.DEVNULL
    return subprocess.Popen(
        _pinned(cmd, core),
        stdout=out,
        stderr=subprocess.STDOUT,
        env=_environ(env),
        start_new_session=True,
        preexec_fn=None if shutil.which("taskset") else (lambda: os.sched_setaffinity(0, {core})),
    )


def _environ(changes: dict[str, str | None] | None) -> dict[str, str]:
    """This environment with ``changes`` applied (``None`` removes a variable)."""
    env = dict(os.environ)
    for name, value in (changes or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (taskset execs in place; litellm may fork workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _cpu_seconds(pid: int) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in _descendants(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            continue
    return total / ticks


def _rss_mb(pid: int) -> float:
    total = 0
    for p in _descendants(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def _first_healthy(port: int, proc: subprocess.Popen, started: float, timeout: float = 120.0) -> float:
    """Seconds from process start to the first 200 answer to a real chat completion."""
    request = _request(port, False)
    while time.monotonic() - started < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} during start")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(request)
                data = s.recv(65536)
                if data.startswith(b"HTTP/1.1 200"):
                    return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.01)
    raise RuntimeError("no healthy answer before the timeout")


@dataclass
class Run:
    target: str
    mode: str
    concurrency: int
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    cpu_ms_per_req: float | None = None


@dataclass
class TargetResult:
    name: str
    first_healthy_s: float | None = None
    rss_mb: float | None = None
    runs: list[Run] = field(default_factory=list)


def _loadgen(
    port: int,
    stream: bool,
    concurrency: int,
    duration: float,
    core: int,
    key: str = BENCH_KEY,
    unique: bool = False,
) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--role",
        "loadgen",
        "--port",
        str(port),
        "--concurrency",
        str(concurrency),
    ]
    cmd += ["--duration", str(duration), "--key", key] + (["--stream"] if stream else [])
    cmd += ["--unique"] if unique else []
    out = subprocess.run(_pinned(cmd, core), capture_output=True, text=True, timeout=duration + 60)
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _measure(
    name: str,
    port: int,
    proc: subprocess.Popen | None,
    levels: list[int],
    duration: float,
    load_core: int,
    key: str = BENCH_KEY,
    unique: bool = False,
) -> TargetResult:
    result = TargetResult(name)
    # Warm-up: connection pools, lazy imports, JIT-ish caches.
    _loadgen(port, False, 8, min(1.0, duration), load_core, key, unique)
    _loadgen(port, True, 8, min(0.5, duration), load_core, key, unique)
    for stream in (False, True):
        for c in levels:
            cpu0 = _cpu_seconds(proc.pid) if proc else 0.0
            r = _loadgen(port, stream, c, duration, load_core, key, unique)
            cpu1 = _cpu_seconds(proc.pid) if proc else 0.0
            per_req = (cpu1 - cpu0) * 1000 / r["requests"] if proc and r["requests"] else None
            mode = "stream" if stream else "plain"
            run = Run(name, mode, c, r["rps"], r["p50_ms"], r["p99_ms"], r["requests"], r["errors"], per_req)
            result.runs.append(run)
            print(
                f"  {name:10s} {run.mode:6s} c={c:<3d} {run.rps:9.0f} req/s  p50 {run.p50_ms:7.3f} ms  "
                f"p99 {run.p99_ms:7.3f} ms  errors {run.errors}"
                + (f"  cpu {per_req:.3f} ms/req" if per_req is not None else ""),
                flush=True,
            )
    if proc:
        result.rss_mb = _rss_mb(proc.pid)
    return result


def _ensure_litellm() -> Path:
    exe = LITELLM_VENV / "bin" / "litellm"
    if exe.exists():
        return exe
    print(f"installing litellm[proxy]=={LITELLM_VERSION} into {LITELLM_VENV} (first run only)...", flush=True)
    PEERS.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
    subprocess.run(
        [
            str(LITELLM_VENV / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            f"litellm[proxy]=={LITELLM_VERSION}",
        ],
        check=True,
    )
    return exe


def _machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    py = platform.python_version()
    return f"{model}, {os.cpu_count()} cores visible, Linux {platform.release()}, Python {py}"


def _config_yaml(upstream_port: int, tmp: Path) -> str:
    return (
        f"general_settings:\n  master_key: {BENCH_KEY}\n"
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        "      model: openai/bench-upstream\n"
        f"      api_base: http://127.0.0.1:{upstream_port}/v1\n"
        "      api_key: sk-fake\n"
    )


def _bench_database_url() -> str | None:
    """A Postgres database for Switchyard's control plane on the local server, if one answers.

    The control plane always has a database (else it starts an embedded one as a child process,
    whose CPU would count against the gateway). LiteLLM runs without one, so Switchyard gets a
    database on the separate local server when there is one; its CPU is not counted.
    """
    url = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    try:
        import asyncpg
    except ImportError:
        return None

    async def create() -> str | None:
        try:
            conn = await asyncpg.connect(url, timeout=3)
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return None
        try:
            if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = 'switchyard_bench'"):
                await conn.execute("CREATE DATABASE switchyard_bench")
        finally:
            await conn.close()
        return url.rsplit("/", 1)[0] + "/switchyard_bench"

    return asyncio.run(create())


def orchestrate(args: argparse.Namespace) -> int:
    cores = sorted(os.sched_getaffinity(0))
    gateway_core = cores[-1]
    upstream_core = cores[0]
    load_core = cores[1] if len(cores) >= 3 else cores[0]
    levels = [1, 16] if args.quick else [1, 16, 64]
    duration = 1.5 if args.quick else args.duration
    print(f"machine: {_machine()}")
    print(
        f"cores: upstream {upstream_core}, load generator {load_core}, gateway {gateway_core}; "
        f"{duration}s per run"
    )

    tmp = Path(tempfile.mkdtemp(prefix="sy-bench-"))
    up_port = _free_port()
    upstream = _spawn([sys.executable, __file__, "--role", "upstream", "--port", str(up_port)], upstream_core)
    results: list[TargetResult] = []
    clean_env: dict[str, str | None] = {"DATABASE_URL": None, "REDIS_URL": None, "SWITCHYARD_CONFIG": None}
    sy_env = dict(clean_env)
    db_url = _bench_database_url()
    if db_url:
        sy_env["DATABASE_URL"] = db_url
    print(f"switchyard control-plane database: {db_url or 'embedded (child process, CPU counted)'}")
    try:
        _first_healthy(up_port, upstream, time.monotonic(), 20)
        print("direct:", flush=True)
        results.append(_measure("direct", up_port, None, levels, duration, load_core))

        cfg = tmp / "config.yaml"
        cfg.write_text(
            _config_yaml(up_port, tmp).replace(
                "general_settings:\n", f"general_settings:\n  data_dir: {tmp / 'data'}\n"
            )
        )
        port = _free_port()
        exe = REPO / ".venv" / "bin" / "switchyard"
        started = time.monotonic()
        proc = _spawn(
            [str(exe), "serve", "--config", str(cfg), "--port", str(port)],
            gateway_core,
            sy_env,
            tmp / "switchyard.log",
        )
        try:
            first = _first_healthy(port, proc, started)
            print(f"switchyard: first healthy answer after {first:.2f}s", flush=True)
            res = _measure("switchyard", port, proc, levels, duration, load_core)
            res.first_healthy_s = first
            results.append(res)
        finally:
            _stop(proc)

        if not args.skip_full:
            results.append(_measure_full(up_port, tmp, sy_env, levels, duration, gateway_core, load_core))

        if not args.skip_litellm:
            litellm = _ensure_litellm()
            lcfg = tmp / "litellm.yaml"
            lcfg.write_text(_config_yaml(up_port, tmp))
            port = _free_port()
            env = {**clean_env, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
            started = time.monotonic()
            proc = _spawn(
                [str(litellm), "--config", str(lcfg), "--host", "127.0.0.1", "--port", str(port)],
                gateway_core,
                env,
                tmp / "litellm.log",
            )
            try:
                first = _first_healthy(port, proc, started, 180)
                print(f"litellm: first healthy answer after {first:.2f}s", flush=True)
                res = _measure("litellm", port, proc, levels, duration, load_core)
                res.first_healthy_s = first
                results.append(res)
            except RuntimeError as exc:
                log_tail = (tmp / "litellm.log").read_text(errors="replace")[-3000:]
                print(f"litellm failed: {exc}\n{log_tail}", flush=True)
            finally:
                _stop(proc)
    finally:
        _stop(upstream)
        if not results or len(results) < 2:
            print(f"logs kept in {tmp}")

    _report(results, levels)
    out_dir = REPO / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    (out_dir / f"gateway_overhead-{stamp}.json").write_text(
        json.dumps({"machine": _machine(), "results": [asdict(r) for r in results]}, indent=2)
    )
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _bench_redis_url() -> str | None:
    """The local Redis for shared limits and cache, if one answers (else in-process ones)."""
    url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    host, port = url.split("//", 1)[1].split("/", 1)[0].split(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return url if s.recv(16).startswith(b"+PONG") else None
    except OSError:
        return None


def _admin_post(port: int, path: str, body: dict) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        headers={"authorization": f"Bearer {BENCH_KEY}", "content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def _measure_full(
    up_port: int,
    tmp: Path,
    sy_env: dict[str, str | None],
    levels: list[int],
    duration: float,
    gateway_core: int,
    load_core: int,
) -> TargetResult:
    """Switchyard with everything on: a virtual key of a team (auth from the control plane),
    rate limits on key and team, the response cache (every request distinct, so all misses and
    stores), and spend accounting."""
    redis_url = _bench_redis_url()
    print(f"switchyard full: virtual key, limits and cache on Redis {redis_url or '(in-process)'}")
    cfg = tmp / "config-full.yaml"
    cfg.write_text(
        _config_yaml(up_port, tmp).replace(
            "general_settings:\n", f"general_settings:\n  data_dir: {tmp / 'data'}\n"
        )
        + "cache_settings:\n  enabled: true\n  cache_nonzero_temperature: true\n"
        + "limit_settings:\n  enabled: true\n"
    )
    env = dict(sy_env)
    if redis_url:
        env["REDIS_URL"] = redis_url
    port = _free_port()
    exe = REPO / ".venv" / "bin" / "switchyard"
    started = time.monotonic()
    proc = _spawn(
        [str(exe), "serve", "--config", str(cfg), "--port", str(port)], gateway_core, env, tmp / "full.log"
    )
    try:
        first = _first_healthy(port, proc, started)
        team = _admin_post(port, "/team/new", {"team_alias": f"bench-{os.getpid()}", "rpm_limit": 10**9})
        key = _admin_post(
            port,
            "/key/generate",
            {
                "team_id": team["team_id"],
                "rpm_limit": 10**9,
                "tpm_limit": 2**31 - 1,
                "max_parallel_requests": 10**6,
            },
        )["key"]
        res = _measure("sy-full", port, proc, levels, duration, load_core, key, unique=True)
        res.first_healthy_s = first
        return res
    finally:
        _stop(proc)


def _report(results: list[TargetResult], levels: list[int]) -> None:
    by = {r.name: r for r in results}
    direct = {(x.mode, x.concurrency): x for x in by["direct"].runs}
    print()
    print(f"gateway overhead, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    header = (
        f"{'target':10s} {'mode':6s} {'conc':>4s} {'req/s':>9s} {'+p50 ms':>8s} {'+p99 ms':>8s} "
        f"{'cpu ms/req':>10s}"
    )
    print(header)
    for r in results:
        for x in r.runs:
            d = direct[(x.mode, x.concurrency)]
            added50 = "" if r.name == "direct" else f"{x.p50_ms - d.p50_ms:8.3f}"
            added99 = "" if r.name == "direct" else f"{x.p99_ms - d.p99_ms:8.3f}"
            cpu = f"{x.cpu_ms_per_req:10.3f}" if x.cpu_ms_per_req is not None else f"{'':10s}"
            print(
                f"{r.name:10s} {x.mode:6s} {x.concurrency:4d} {x.rps:9.0f} {added50:>8s} {added99:>8s} {cpu}"
            )
    print()
    for r in results:
        if r.name == "direct":
            continue
        print(f"{r.name:10s} RSS {r.rss_mb:6.1f} MB   first healthy answer {r.first_healthy_s:.2f} s")
    for name in ("switchyard", "sy-full"):
        if name not in by or "litellm" not in by:
            continue
        sy = {(x.mode, x.concurrency): x for x in by[name].runs}
        ll = {(x.mode, x.concurrency): x for x in by["litellm"].runs}
        print()
        print(f"{name} / LiteLLM (same core, same run):")
        for mode in ("plain", "stream"):
            for c in levels:
                a, b = sy[(mode, c)], ll[(mode, c)]
                rps = a.rps / b.rps if b.rps else float("inf")
                cpu = (b.cpu_ms_per_req or 0) / (a.cpu_ms_per_req or float("nan"))
                print(f"  {mode:6s} c={c:<3d} req/s x{rps:5.1f}   CPU per request: LiteLLM uses x{cpu:5.1f}")
        best = {
            m: max(sy[(m, c)].rps for c in levels) / max(ll[(m, c)].rps for c in levels)
            for m in ("plain", "stream")
        }
        print(f"  peak req/s per core: plain x{best['plain']:.1f}, stream x{best['stream']:.1f}")
    _ = statistics  # (kept for ad-hoc analysis in the REPL)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short runs, concurrency 1 and 16 only")
    parser.add_argument("--skip-litellm", action="store_true", help="do not measure LiteLLM")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--role", choices=["orchestrate", "upstream", "loadgen"], default="orchestrate")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--key", default=BENCH_KEY)
    parser.add_argument("--unique", action="store_true", help="loadgen: every request distinct")
    parser.add_argument(
        "--skip-full",
        action="store_true",
        help="do not measure Switchyard with virtual keys, limits and cache",
    )
    args = parser.parse_args()
    if args.role == "upstream":
        run_upstream(args.port)
        return 0
    if args.role == "loadgen":
        run_loadgen(args.port, args.stream, args.concurrency, args.duration, args.key, args.unique)
        return 0
    return orchestrate(args)


if __name__ == "__main__":
    raise SystemExit(main())
