"""One engine replica on Ray: an actor that runs ``switchyard engine serve`` on a free port of its node.

The actor is named ``<app>/<index>`` in its namespace (``DEFAULT_NAMESPACE`` unless told), which is
how the gateway finds the replicas of an app: it lists the named actors and asks each for its
``endpoint()``. The engine is a child process rather than code inside the actor, so that it is the
same server as everywhere else (its own event loop, signals, tensor-parallel workers) and Ray only
places, restarts and stops it. The actor's GPUs (``num_gpus``) reach the engine through the
``CUDA_VISIBLE_DEVICES`` Ray sets for the actor, which the child inherits.

Lifetimes are tied both ways: the engine gets SIGTERM when the actor's process dies (Linux's
parent-death signal, so ``ray.kill`` leaves no engine behind), and the actor exits when its engine
dies, so that Ray restarts it (``max_restarts``) or reports it dead instead of publishing an
endpoint nobody answers on.

This module does not import ``ray`` at import time: the launcher wraps ``EngineReplica`` with
``ray.remote`` itself.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TypedDict

DEFAULT_NAMESPACE = "switchyard"
_API_KEY_ENV = "SWITCHYARD_ENGINE_API_KEY"  # what `switchyard engine serve --api-key` defaults to
_WILDCARD_HOSTS = ("0.0.0.0", "::", "")
_LOG_TAIL_CHARS = 4000

# Runs in the child before the engine: asks Linux for SIGTERM when the parent (the actor) dies,
# then becomes the engine. Not ``preexec_fn``, which is unsafe in a process with threads (Ray's
# workers have many); PR_SET_PDEATHSIG survives exec. argv[1] is the actor's pid: if it died
# before the prctl, the signal would never come, so the child gives up at once.
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "if hasattr(libc, 'prctl'): libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG, Linux only\n"
    "if os.getppid() != int(sys.argv[1]): sys.exit(1)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


class ReplicaEndpoint(TypedDict):
    """What a replica publishes: where its engine answers and what it serves."""

    namespace: str  # the Ray namespace of the replica's actor
    app: str
    index: int
    url: str  # the engine's OpenAI base URL, ending in /v1
    model: str  # the engine's served model name
    node: str  # the Ray node's IP address
    pid: int  # the engine process on that node
    log: str  # the engine's log file on that node


def replica_name(app: str, index: int) -> str:
    """The actor name of replica ``index`` of ``app``."""
    return f"{app}/{index}"


def parse_replica_name(name: str) -> tuple[str, int] | None:
    """``(app, index)`` for an actor named by ``replica_name``; None for any other actor."""
    app, sep, index = name.rpartition("/")
    if not sep or not app or not index.isdigit():
        return None
    return app, int(index)


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _get(url: str, api_key: str | None) -> bytes:
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=2) as resp:
        return bytes(resp.read())


class EngineReplica:
    """Starts the engine in ``__init__`` and returns once it answers, so a live actor always has a
    working endpoint (a call to a restarting one waits for its new engine)."""

    def __init__(
        self,
        app: str,
        index: int,
        engine_args: list[str],
        host: str | None = None,
        api_key: str | None = None,
        ready_timeout_s: float = 600.0,
    ) -> None:
        import ray

        node = ray.util.get_node_ip_address()
        bind = host if host is not None else node
        published = node if bind in _WILDCARD_HOSTS else bind
        port = _free_port(bind)
        log_dir = Path(tempfile.gettempdir()) / "switchyard-ray"
        log_dir.mkdir(parents=True, exist_ok=True)
        self._log = log_dir / f"{app.replace('/', '_')}-{index}-{os.getpid()}.log"
        command = [
            *(sys.executable, "-m", "gateway.cli", "engine", "serve", *engine_args),
            *("--host", bind, "--port", str(port)),
        ]
        env = dict(os.environ)
        if api_key is not None:
            env[_API_KEY_ENV] = api_key  # not on the command line, where `ps` shows it
        api_key = env.get(_API_KEY_ENV)
        with self._log.open("wb") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *command],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        self._stopping = False
        base = f"http://[{published}]:{port}" if ":" in published else f"http://{published}:{port}"
        model = self._wait_ready(base, api_key, ready_timeout_s)
        self._endpoint = ReplicaEndpoint(
            namespace=ray.get_runtime_context().namespace,
            app=app,
            index=index,
            url=base + "/v1",
            model=model,
            node=node,
            pid=self._process.pid,
            log=str(self._log),
        )
        print(f"switchyard replica {replica_name(app, index)}: {model} at {base}/v1 (log {self._log})")
        threading.Thread(target=self._exit_with_engine, name="engine-watch", daemon=True).start()

    def _wait_ready(self, base: str, api_key: str | None, timeout_s: float) -> str:
        """The served model name, once ``/health`` answers; raises with the engine's log if it exits."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"the engine exited with {self._process.returncode} during start:\n{self._log_tail()}"
                )
            try:
                _get(base + "/health", None)
                models = json.loads(_get(base + "/v1/models", api_key))
                return str(models["data"][0]["id"])
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                self._process.terminate()
                raise RuntimeError(f"the engine did not answer within {timeout_s:g}s:\n{self._log_tail()}")
            time.sleep(0.3)

    def _log_tail(self) -> str:
        try:
            return self._log.read_text(errors="replace")[-_LOG_TAIL_CHARS:]
        except OSError:
            return ""

    def _exit_with_engine(self) -> None:
        code = self._process.wait()
        if self._stopping:
            return
        print(f"switchyard replica: the engine exited with {code}; ending the actor\n{self._log_tail()}")
        sys.stdout.flush()
        # Not sys.exit (only this thread would end): Ray sees the worker die and restarts the
        # actor within its max_restarts, or marks it dead.
        os._exit(1)

    def endpoint(self) -> ReplicaEndpoint:
        return self._endpoint

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """Stop the engine gracefully (in-flight requests get ``timeout_s``); its exit code."""
        self._stopping = True
        self._process.terminate()
        try:
            return self._process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._process.kill()
            return self._process.wait()
