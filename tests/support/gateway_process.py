"""Run a real ``switchyard serve`` process on a free loopback port (reusable by every team).

    from tests.support.gateway_process import gateway_process

    with gateway_process({"model_list": [...]}, env={"REDIS_URL": url}) as gw:
        client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x")
        ...
        gw.logs()   # stdout+stderr so far, for assertion messages

The context manager writes the config (a dict, dumped as YAML, or ``config_text`` verbatim) to a
temporary file, starts ``.venv/bin/switchyard serve --config FILE --port N``, waits until
``/health/readiness`` answers 200, yields a ``GatewayProcess`` and terminates the process on exit.
``general_settings.data_dir`` defaults to the temporary directory so tests leave nothing behind.
With neither ``config`` nor ``config_text`` the gateway starts with no ``--config`` (embedded
defaults, local mode), in the temporary directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parents[2]


def switchyard_command() -> list[str]:
    """The console command: ``.venv/bin/switchyard`` (or this interpreter's module form)."""
    exe = REPO / ".venv" / "bin" / "switchyard"
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", "gateway.cli"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class GatewayProcess:
    base_url: str  # "http://127.0.0.1:PORT" (append "/v1" for the OpenAI SDK)
    port: int
    process: subprocess.Popen[bytes]
    config_path: Path
    log_path: Path

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.process.poll() is None


def _write_config(directory: Path, config: Mapping[str, Any] | None, config_text: str | None) -> Path:
    path = directory / "config.yaml"
    if config_text is not None:
        path.write_text(config_text)
        return path
    data: dict[str, Any] = dict(config or {})
    general = dict(data.get("general_settings") or {})
    general.setdefault("data_dir", str(directory / "data"))
    data["general_settings"] = general
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_switchyard(
    args: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """Run ``switchyard ARGS`` to completion (for commands expected to exit, e.g. a refused start)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [*switchyard_command(), *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


@contextmanager
def gateway_process(
    config: Mapping[str, Any] | None = None,
    *,
    config_text: str | None = None,
    env: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
    ready_timeout: float = 30.0,
) -> Iterator[GatewayProcess]:
    """Start the gateway with ``config`` (and ``env`` added to the environment); stop it on exit."""
    directory = Path(tempfile.mkdtemp(prefix="switchyard-gw-"))
    try:
        config_path = _write_config(directory, config, config_text)
        log_path = directory / "gateway.log"
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        port = free_port()
        with open(log_path, "wb") as log:
            # No config at all: the embedded defaults (what `./switchyard serve` does).
            config_args = (
                ["--config", str(config_path)] if config is not None or config_text is not None else []
            )
            proc = subprocess.Popen(
                # One process unless a test asks for more (`extra_args=["--workers", "2"]` wins).
                [
                    *switchyard_command(),
                    "serve",
                    *config_args,
                    "--port",
                    str(port),
                    "--workers",
                    "1",
                    *extra_args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=directory,
                start_new_session=True,
            )
        gw = GatewayProcess(f"http://127.0.0.1:{port}", port, proc, config_path, log_path)
        try:
            _wait_ready(gw, ready_timeout)
            yield gw
        finally:
            _stop(proc)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _wait_ready(gw: GatewayProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2.0) as client:
        while True:
            if not gw.alive():
                raise RuntimeError(
                    f"switchyard exited with {gw.process.returncode} during start:\n{gw.logs()}"
                )
            try:
                if client.get(gw.base_url + "/health/readiness").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"switchyard not ready after {timeout}s:\n{gw.logs()}")
            time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
