"""``switchyard engine serve --ray --replicas N [engine args]``: N engine replicas on a Ray cluster.

Each replica is an ``EngineReplica`` actor (``gateway.engines.ray_replica``) named ``<app>/<i>`` in
the namespace ``--ray-namespace``, reserving ``--num-cpus-per-replica`` CPUs and, for a CUDA
device, ``--tensor-parallel-size`` GPUs. Every other argument goes to each replica's
``switchyard engine serve`` unchanged (``--port`` is each replica's own free port).

The launcher stays in the foreground as the replicas' owner: Ctrl-C or SIGTERM stops the engines
gracefully and ends the actors; if the launcher dies anyway, Ray ends the actors it owned and their
engines follow. A replica whose engine crashes is restarted by Ray (``--max-restarts``) on a new
port, which the gateway's discovery picks up.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from typing import Any

from gateway.engines.ray_replica import DEFAULT_NAMESPACE, EngineReplica, ReplicaEndpoint, replica_name

_CHECK_INTERVAL_S = 5.0
_STOP_TIMEOUT_S = 30.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="switchyard engine serve --ray",
        description="Run engine replicas on a Ray cluster; other arguments go to each engine.",
        allow_abbrev=False,  # an engine flag must never be taken for an abbreviation of ours
    )
    parser.add_argument("--ray", action="store_true", required=True)
    parser.add_argument("--replicas", type=int, default=1, help="engine replicas to start (default 1)")
    parser.add_argument(
        "--ray-address",
        default=None,
        help="the cluster's GCS address, or 'auto' (default: the cluster this machine runs with "
        "`ray start`, else a new local one that lives as long as this command)",
    )
    parser.add_argument("--ray-namespace", default=DEFAULT_NAMESPACE, help="Ray namespace of the replicas")
    parser.add_argument(
        "--ray-app",
        default=None,
        help="the app name the gateway's config names as `ray/<app>` (default: --served-model-name, "
        "else 'engine')",
    )
    parser.add_argument("--num-cpus-per-replica", type=float, default=1.0)
    parser.add_argument(
        "--max-restarts", type=int, default=3, help="times Ray restarts a replica whose engine died"
    )
    parser.add_argument(
        "--ready-timeout", type=float, default=600.0, help="seconds a replica may take to load its model"
    )
    return parser


def _engine_view() -> argparse.ArgumentParser:
    """The engine flags the launcher reads (placement, probing) without consuming the others."""
    view = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    view.add_argument("--host", default=None)
    view.add_argument("--port", default=None)
    view.add_argument("--api-key", default=None)
    view.add_argument("--device", default="cpu")
    view.add_argument("--tensor-parallel-size", type=int, default=1)
    view.add_argument("--served-model-name", default=None)
    return view


def _without(args: list[str], flag: str) -> list[str]:
    """``args`` less ``flag`` and its value (either ``--flag value`` or ``--flag=value``)."""
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(flag + "="):
            out.append(arg)
    return out


def main(argv: list[str]) -> int:
    """``argv`` is what follows ``switchyard engine``: ``serve --ray ...``."""
    if not argv or argv[0] != "serve":
        print("switchyard engine: --ray goes with `engine serve`", file=sys.stderr)
        return 2
    ours, engine_args = build_parser().parse_known_args(argv[1:])
    seen, _ = _engine_view().parse_known_args(engine_args)
    if seen.port is not None:
        print(
            "switchyard engine: with --ray each replica picks a free port; leave --port out", file=sys.stderr
        )
        return 2
    if ours.replicas < 1:
        print("switchyard engine: --replicas must be at least 1", file=sys.stderr)
        return 2
    try:
        import ray
    except ImportError:
        print(
            "switchyard engine: --ray needs Ray (pip install 'switchyard[ray]')",
            file=sys.stderr,
        )
        return 2
    # The key reaches each engine through its environment, never its command line.
    engine_args = _without(_without(engine_args, "--api-key"), "--host")
    app = ours.ray_app or seen.served_model_name or "engine"
    gpus = seen.tensor_parallel_size if seen.device.startswith("cuda") else 0

    try:
        ray.init(address=ours.ray_address, namespace=ours.ray_namespace)
    except ConnectionError as exc:
        # Ray's message says only "failed to connect"; the last line of its cause says why.
        cause = str(exc.__cause__).strip().splitlines()[-1:] if exc.__cause__ is not None else []
        print(f"switchyard engine: {'; '.join([str(exc), *cause])}", file=sys.stderr)
        return 1
    address = ray.get_runtime_context().gcs_address
    actor_class = ray.remote(EngineReplica)
    replicas: dict[str, Any] = {}
    try:
        for i in range(ours.replicas):
            name = replica_name(app, i)
            try:
                replicas[name] = actor_class.options(
                    name=name,
                    num_cpus=ours.num_cpus_per_replica,
                    num_gpus=gpus,
                    max_restarts=ours.max_restarts,
                    scheduling_strategy="SPREAD",  # replicas on different nodes where there are several
                ).remote(app, i, engine_args, seen.host, seen.api_key, ours.ready_timeout)
            except ValueError as exc:
                print(
                    f"switchyard engine: cannot create replica {name!r} in namespace "
                    f"{ours.ray_namespace!r} ({exc}); is another launcher running app {app!r}?",
                    file=sys.stderr,
                )
                return 1
        urls: dict[str, str] = {}
        if not _wait_ready(ray, replicas, ours.ready_timeout + 60.0, urls):
            return 1
        print(
            f"switchyard engine: {len(replicas)} replica(s) of app {app!r} ready in namespace "
            f"{ours.ray_namespace!r} on the Ray cluster at {address}. Gateway config:\n"
            f"  - model_name: <name>\n"
            f"    litellm_params: {{model: ray/{app}, ray_address: '{address}', "
            f"ray_namespace: {ours.ray_namespace}}}",
            flush=True,
        )
        if os.environ.get("RAY_AUTH_MODE") == "token":
            # ray.init sets it for a cluster it started itself, whose token it keeps in
            # ~/.ray/auth_token; a process that joins without it is refused.
            print(
                "switchyard engine: this cluster requires its token: run the gateway with "
                "RAY_AUTH_MODE=token (and RAY_AUTH_TOKEN, or ~/.ray/auth_token, on another machine)",
                flush=True,
            )
        return _supervise(ray, replicas, urls)
    finally:
        _stop_all(ray, replicas)
        ray.shutdown()


def _wait_ready(ray: Any, replicas: dict[str, Any], timeout_s: float, urls: dict[str, str]) -> bool:
    """Print each replica's endpoint as it comes up (and keep it in ``urls``, so a restart right
    after start is reported); False (after saying why) if one cannot start."""
    pending = {replicas[name].endpoint.remote(): name for name in replicas}
    deadline = time.monotonic() + timeout_s
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
        if not done:
            print(
                f"switchyard engine: replicas not ready in {timeout_s:g}s: {sorted(pending.values())}",
                file=sys.stderr,
            )
            return False
        name = pending.pop(done[0])
        try:
            endpoint: ReplicaEndpoint = ray.get(done[0])
        except ray.exceptions.RayError as exc:
            print(f"switchyard engine: replica {name} failed to start: {exc}", file=sys.stderr)
            return False
        urls[name] = endpoint["url"]
        print(
            f"switchyard engine: replica {name} ready at {endpoint['url']} (node {endpoint['node']})",
            flush=True,
        )
    return True


def _supervise(ray: Any, replicas: dict[str, Any], urls: dict[str, str]) -> int:
    """Until SIGINT/SIGTERM: report replicas restarted elsewhere or gone; 1 once all are gone."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(_CHECK_INTERVAL_S):
        refs = {replicas[name].endpoint.remote(): name for name in replicas}
        done, _ = ray.wait(list(refs), num_returns=len(refs), timeout=_CHECK_INTERVAL_S)
        for ref in done:
            name = refs[ref]
            try:
                url = ray.get(ref)["url"]
            except ray.exceptions.ActorUnavailableError:
                continue  # restarting: its next answer has the new endpoint
            except ray.exceptions.RayActorError as exc:
                if _still_named(ray, name):
                    continue  # died and being restarted: Ray keeps the name until it gives up
                print(f"switchyard engine: replica {name} is gone: {exc}", file=sys.stderr, flush=True)
                del replicas[name]
                continue
            if urls.get(name, url) != url:
                print(f"switchyard engine: replica {name} restarted at {url}", flush=True)
            urls[name] = url
        if not replicas:
            print("switchyard engine: every replica is gone", file=sys.stderr)
            return 1
    return 0


def _still_named(ray: Any, name: str) -> bool:
    try:
        ray.get_actor(name)
    except ValueError:
        return False
    return True


def _stop_all(ray: Any, replicas: dict[str, Any]) -> None:
    """Engines stopped gracefully (their in-flight requests finish), then the actors ended."""
    if not replicas:
        return
    refs = [actor.stop.remote() for actor in replicas.values()]
    ray.wait(refs, num_returns=len(refs), timeout=_STOP_TIMEOUT_S)
    for actor in replicas.values():
        ray.kill(actor, no_restart=True)
