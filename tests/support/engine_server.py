"""``switchyard engine serve`` as a real process on a free loopback port, for tests that drive the
engine's HTTP API."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.gateway_process import REPO, free_port, switchyard_command


@dataclass
class EngineServer:
    base_url: str  # without /v1
    process: subprocess.Popen[bytes]
    log_path: Path
    killed: bool = False  # it did not stop within 30 s of SIGTERM, so its process group was killed

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def engine_server(args: Sequence[str], log_path: Path, timeout_s: float = 240) -> Iterator[EngineServer]:
    """``engine serve ARGS --port P`` until ``/health`` answers 200 (the test fails with the server's
    log if it exits or takes longer than ``timeout_s``). On exit SIGTERM goes to the server alone, so
    a test can check what the server itself takes down with it; only a server still running 30 s
    later has its whole process group killed (``killed``)."""
    port = free_port()
    command = [*switchyard_command(), "engine", "serve", *args, "--port", str(port)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = EngineServer(f"http://127.0.0.1:{port}", process, log_path)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                pytest.fail(f"engine server exited:\n{server.logs()}")
            try:
                if httpx.get(server.base_url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"engine server did not become healthy:\n{server.logs()}")
            time.sleep(0.3)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.killed = True
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def engine_serve_refusal(args: Sequence[str]) -> str:
    """``engine serve ARGS`` for settings it must refuse: asserts it exits 2 (a usage error) with no
    traceback, and returns what it said on stderr."""
    result = subprocess.run(
        [*switchyard_command(), "engine", "serve", *args, "--port", str(free_port())],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr
