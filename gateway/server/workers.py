"""``switchyard serve --workers N``: N gateway processes on one port, supervised.

Why a supervisor of our own rather than uvicorn's ``workers=``: uvicorn's needs an import string
and rebuilds everything from it in each child, while ``serve`` passes objects built from the loaded
config (the bounded protocol class, the draining server). Here the supervisor binds the listening
socket once and starts each worker as ``python -m gateway.cli serve ... --worker-fd FD``: the worker
loads the same config, builds its own app (its own Postgres and Redis pools and upstream
connections) and serves the inherited socket; the kernel hands each new connection to whichever
worker accepts first. A worker that exits is started again (after a second's pause, so a worker
that cannot start does not spin). The embedded Postgres is never started here: more than one
worker needs ``DATABASE_URL`` (see ``worker_count``).

Shared state: virtual keys, budgets and spend live in Postgres; rate limits and the response cache
are exact across workers only in Redis. Without ``REDIS_URL`` the limiter and cache are in-process,
so ``worker_count`` falls back to one worker and says why.

``/metrics``: the supervisor gives every worker one ``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's
multiprocess mode), so whichever worker answers the scrape reports the sum over all of them
(``gateway.metrics.render``). Dead workers' files are marked so live gauges drop them.

SIGTERM (or SIGINT) to the supervisor: it closes its copy of the socket and sends SIGTERM to every
worker, which drains as a single process does (``gateway.server.drain``), then waits for them.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import FrameType

from gateway.config import GatewayConfig

_PR_SET_PDEATHSIG = 1  # prctl(2)
# A worker that exits is restarted no sooner than this after it was started.
_RESTART_PAUSE_S = 1.0


def _log(message: str) -> None:
    print(f"switchyard: {message}", file=sys.stderr, flush=True)


def worker_count(requested: int | None, config: GatewayConfig) -> int:
    """How many workers to run: ``requested``, else one per core with a master key, else one.

    One whenever more would be wrong: the embedded Postgres is one server for one process, and
    without Redis the limiter and cache are per process (limits would multiply by N).
    """
    settings = config.general_settings
    if requested is None:
        requested = len(os.sched_getaffinity(0)) if settings.master_key else 1
    if requested <= 1:
        return 1
    missing = [
        name
        for name, value in (("DATABASE_URL", settings.database_url), ("REDIS_URL", settings.redis_url))
        if not value
    ]
    if missing:
        _log(
            f"running 1 worker instead of {requested}: workers share keys, spend, limits and the cache "
            f"through Postgres and Redis, and {' and '.join(missing)} is not set"
        )
        return 1
    return requested


def listen(host: str, port: int) -> socket.socket:
    """The listening socket every worker inherits."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.set_inheritable(True)
    return sock


def _drain_when_orphaned() -> None:
    """In the worker before exec: SIGTERM it (it drains) if the supervisor dies, even by SIGKILL, so no
    worker outlives it holding the port."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Supervisor:
    worker_argv: Sequence[str]  # the worker command, without --worker-fd
    workers: int
    sock: socket.socket
    grace_s: float
    _procs: dict[int, tuple[subprocess.Popen[bytes], float]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> int:
        metrics_dir = tempfile.mkdtemp(prefix="switchyard-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        try:
            for slot in range(self.workers):
                self._start(slot)
            pids = ", ".join(str(proc.pid) for proc, _ in self._procs.values())
            _log(f"{self.workers} workers serving (pids {pids})")
            while not self._stop.wait(0.2):
                self._restart_dead()
            self.sock.close()
            return self._shutdown()
        finally:
            shutil.rmtree(metrics_dir, ignore_errors=True)

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        self._stop.set()

    def _start(self, slot: int) -> None:
        fd = self.sock.fileno()
        proc = subprocess.Popen(
            [*self.worker_argv, "--worker-fd", str(fd)], pass_fds=(fd,), preexec_fn=_drain_when_orphaned
        )
        self._procs[slot] = (proc, time.monotonic())

    def _restart_dead(self) -> None:
        from prometheus_client import multiprocess

        for slot, (proc, started) in list(self._procs.items()):
            code = proc.poll()
            if code is None or time.monotonic() - started < _RESTART_PAUSE_S:
                continue
            _log(f"worker {proc.pid} exited with status {code}; starting another")
            multiprocess.mark_process_dead(proc.pid)
            self._start(slot)

    def _shutdown(self) -> int:
        for proc, _ in self._procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s + 10
        for proc, _ in self._procs.values():
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _log(f"worker {proc.pid} did not stop within the grace period; killing it")
                proc.kill()
                proc.wait()
        return 0
