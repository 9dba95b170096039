"""``serve --workers 2`` against ``--workers 1``: req/s on the full path, same machine.

The full path as in bench/gateway_overhead.py (``_measure_full``): a virtual key of a team (auth from
Postgres), rate limits on key and team in Redis, the response cache in Redis (every request distinct,
so all misses and stores), and spend accounting to Postgres. The fake upstream is gateway_overhead's
(imported); the load generator is wrk (Debian's package) when installed, else gateway_overhead's.
Nothing is pinned: the workers, the upstream, the load generator, Redis and Postgres share the
machine's cores, as they would on a small host. Every run is printed with each component's CPU per
request and the ratio that split allows at best; the bar is 2 workers >= 1.7x 1 worker at the
highest concurrency.

    .venv/bin/python bench/workers.py [--quick] [--duration S]

Needs Postgres and Redis (BENCH_DATABASE_URL, BENCH_REDIS_URL; defaults on 127.0.0.1): more than one
worker refuses to start without them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gateway_overhead as bench  # the sibling module, found through the path above

BAR = 1.7
_SERVICES = {"redis": "redis-server", "postgres": "postgres"}  # process name prefixes in /proc


# wrk (Debian's package) as the load generator when installed: a C client costs the shared cores
# about a tenth of the Python one's CPU per request, which two workers on two cores need (the CPU
# line printed per run shows each component's share). Every body is distinct (all cache misses):
# the thread id and a counter, after a per-run nonce so no run hits an earlier run's cache.
_WRK_SCRIPT = """
local key, model, nonce = "", "", ""
local counter = 0
local threads = {}
function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end
function init(args)
  key, model, nonce = args[1], args[2], args[3]
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. key
end
function request()
  counter = counter + 1
  local body = '{"model":"' .. model .. '","messages":[{"role":"user","content":"Hello, how are you today? '
    .. nonce .. '-' .. tid .. '-' .. counter .. '"}],"max_tokens":20}'
  return wrk.format(nil, "/v1/chat/completions", nil, body)
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"requests":%d,"bad":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d}\\n',
    summary.requests, e.status + e.connect + e.read + e.write + e.timeout, summary.duration,
    latency:percentile(50), latency:percentile(99)))
end
"""


def _loadgen(port: int, concurrency: int, duration: float, key: str) -> dict:
    """One load run: wrk when on PATH, else the Python load generator of gateway_overhead."""
    if shutil.which("wrk"):
        return _loadgen_wrk(port, concurrency, duration, key)
    cmd = [sys.executable, bench.__file__, "--role", "loadgen", "--port", str(port)]
    cmd += ["--concurrency", str(concurrency), "--duration", str(duration), "--key", key, "--unique"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _loadgen_wrk(port: int, concurrency: int, duration: float, key: str) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(_WRK_SCRIPT)
    cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(duration))}s", "--timeout", "10s"]
    cmd += ["-s", f.name, f"http://127.0.0.1:{port}", "--", key, bench.MODEL, uuid.uuid4().hex[:12]]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    os.unlink(f.name)
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed: {out.stderr[-2000:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    elapsed = r["duration_us"] / 1e6
    ok = r["requests"] - r["bad"]
    return {
        "requests": ok,
        "errors": r["bad"],
        "rps": ok / elapsed if elapsed else 0.0,
        "p50_ms": r["p50_us"] / 1e3,
        "p99_ms": r["p99_us"] / 1e3,
        "cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
    }


def _service_cpu_seconds() -> dict[str, float]:
    """CPU seconds so far of the machine's Redis and Postgres server processes, by name."""
    ticks = os.sysconf("SC_CLK_TCK")
    totals = {"redis": 0.0, "postgres": 0.0}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                head, _, rest = f.read().rpartition(")")
        except OSError:
            continue
        name = head.partition("(")[2]
        kind = next((k for k, prefix in _SERVICES.items() if name.startswith(prefix)), None)
        if kind:
            fields = rest.split()
            totals[kind] += (int(fields[11]) + int(fields[12])) / ticks
    return totals


def _cpu_line(gateway: float, upstream: float, loadgen: float, services: dict[str, float], n: int) -> str:
    """CPU per request by component, and the ratio two workers could reach at best on two cores:
    with one worker it has a core to itself (the rest fit on the other); with two, every component
    shares both cores, so the best is 2 * gateway / (gateway + the rest)."""
    per = {"gateway": gateway, "upstream": upstream, "loadgen": loadgen, **services}
    us = {k: v / n * 1e6 for k, v in per.items()}
    rest = sum(v for k, v in us.items() if k != "gateway")
    ceiling = min(2.0, 2 * us["gateway"] / (us["gateway"] + rest)) if us["gateway"] else 0.0
    parts = "  ".join(f"{k} {v:.0f}" for k, v in us.items())
    return f"    CPU us/request: {parts}; ceiling for 2 workers on 2 cores ~{ceiling:.2f}x"


def _measure(
    workers: int,
    up_port: int,
    up_pid: int,
    tmp: Path,
    env: dict[str, str | None],
    levels: list[int],
    duration: float,
) -> dict[int, float]:
    cfg = tmp / f"config-{workers}.yaml"
    cfg.write_text(
        bench._config_yaml(up_port, tmp).replace(
            "general_settings:\n", f"general_settings:\n  data_dir: {tmp / 'data'}\n"
        )
        + "cache_settings:\n  enabled: true\n  cache_nonzero_temperature: true\n"
        + "limit_settings:\n  enabled: true\n"
    )
    port = bench._free_port()
    exe = bench.REPO / ".venv" / "bin" / "switchyard"
    cmd = [str(exe), "serve", "--config", str(cfg), "--port", str(port), "--workers", str(workers)]
    log = open(tmp / f"workers-{workers}.log", "wb")
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env=bench._environ(env), start_new_session=True
    )
    rps: dict[int, float] = {}
    try:
        bench._first_healthy(port, proc, time.monotonic())
        team = bench._admin_post(
            port, "/team/new", {"team_alias": f"bench-w{workers}-{port}", "rpm_limit": 10**9}
        )
        body = {
            "team_id": team["team_id"],
            "rpm_limit": 10**9,
            "tpm_limit": 2**31 - 1,
            "max_parallel_requests": 10**6,
        }
        key = bench._admin_post(port, "/key/generate", body)["key"]
        _loadgen(port, 16, min(1.0, duration), key)  # warm-up: pools in every worker
        for c in levels:
            before = (bench._cpu_seconds(proc.pid), bench._cpu_seconds(up_pid), _service_cpu_seconds())
            r = _loadgen(port, c, duration, key)
            gateway_cpu = bench._cpu_seconds(proc.pid) - before[0]
            upstream_cpu = bench._cpu_seconds(up_pid) - before[1]
            services = {k: v - before[2][k] for k, v in _service_cpu_seconds().items()}
            rps[c] = r["rps"]
            print(
                f"  workers={workers} c={c:<3d} {r['rps']:9.0f} req/s  p50 {r['p50_ms']:7.3f} ms  "
                f"p99 {r['p99_ms']:7.3f} ms  errors {r['errors']}",
                flush=True,
            )
            if r["requests"]:
                print(_cpu_line(gateway_cpu, upstream_cpu, r["cpu_s"], services, r["requests"]), flush=True)
    finally:
        bench._stop(proc)
        log.close()
    return rps


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short runs, concurrency 16 and 64 only")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    args = parser.parse_args()
    levels = [16, 64] if args.quick else [1, 16, 64, 128]
    duration = 2.0 if args.quick else args.duration
    db_url, redis_url = bench._bench_database_url(), bench._bench_redis_url()
    if not db_url or not redis_url:
        print("needs Postgres and Redis (BENCH_DATABASE_URL, BENCH_REDIS_URL)", file=sys.stderr)
        return 2
    print(f"machine: {bench._machine()}; {duration}s per run; nothing pinned")
    env: dict[str, str | None] = {"DATABASE_URL": db_url, "REDIS_URL": redis_url, "SWITCHYARD_CONFIG": None}
    tmp = Path(tempfile.mkdtemp(prefix="sy-bench-workers-"))
    up_port = bench._free_port()
    upstream = subprocess.Popen(
        [sys.executable, bench.__file__, "--role", "upstream", "--port", str(up_port)], start_new_session=True
    )
    try:
        bench._first_healthy(up_port, upstream, time.monotonic(), 20)
        one = _measure(1, up_port, upstream.pid, tmp, env, levels, duration)
        two = _measure(2, up_port, upstream.pid, tmp, env, levels, duration)
    finally:
        bench._stop(upstream)
    for c in levels:
        print(
            f"c={c:<3d} 2 workers / 1 worker: {two[c] / one[c]:.2f}x"
            if one[c]
            else f"c={c}: no 1-worker result"
        )
    top = levels[-1]
    ratio = two[top] / one[top] if one[top] else 0.0
    print(f"bar {BAR}x at c={top}: {'met' if ratio >= BAR else 'NOT met'} ({ratio:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
