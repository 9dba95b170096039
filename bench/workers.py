"""``serve --workers 2`` against ``--workers 1``: req/s on the full path, same machine.

The full path as in bench/gateway_overhead.py (``_measure_full``): a virtual key of a team (auth from
Postgres), rate limits on key and team in Redis, the response cache in Redis (every request distinct,
so all misses and stores), and spend accounting to Postgres. The fake upstream and the load generator
are gateway_overhead's (imported), and nothing is pinned: the workers, the upstream and the load
generator share the machine's cores, as they would on a small host. Every run is printed; the bar is
2 workers >= 1.7x 1 worker at the highest concurrency.

    .venv/bin/python bench/workers.py [--quick] [--duration S]

Needs Postgres and Redis (BENCH_DATABASE_URL, BENCH_REDIS_URL; defaults on 127.0.0.1): more than one
worker refuses to start without them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gateway_overhead as bench  # the sibling module, found through the path above

BAR = 1.7


def _loadgen(port: int, concurrency: int, duration: float, key: str) -> dict:
    cmd = [sys.executable, bench.__file__, "--role", "loadgen", "--port", str(port)]
    cmd += ["--concurrency", str(concurrency), "--duration", str(duration), "--key", key, "--unique"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _measure(
    workers: int, up_port: int, tmp: Path, env: dict[str, str | None], levels: list[int], duration: float
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
            r = _loadgen(port, c, duration, key)
            rps[c] = r["rps"]
            print(
                f"  workers={workers} c={c:<3d} {r['rps']:9.0f} req/s  p50 {r['p50_ms']:7.3f} ms  "
                f"p99 {r['p99_ms']:7.3f} ms  errors {r['errors']}",
                flush=True,
            )
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
        one = _measure(1, up_port, tmp, env, levels, duration)
        two = _measure(2, up_port, tmp, env, levels, duration)
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
