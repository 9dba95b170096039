"""``python -m gateway.engines.ray_directory ADDRESS NAMESPACE...``: the engine replicas on a Ray
cluster, one JSON line on stdout per round (``{"replicas": [ReplicaEndpoint, ...]}``, or
``{"error": "..."}`` for a round that could not list them).

The gateway runs this as a child process (``gateway.routing.ray_discovery``) rather than connecting
to Ray itself: a Ray driver exits its whole process when the cluster's head stays unreachable, and
``ray.get`` blocks; here either only costs a restart of this process, never the gateway's. Each
round lists the named actors of the given namespaces and asks every replica
(``gateway.engines.ray_replica``) for its endpoint; one that does not answer within the round
(restarting, or dead) is left out of that round's list. The process exits when its stdin closes,
so it never outlives the gateway.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from typing import Any

from gateway.engines.ray_replica import ReplicaEndpoint, parse_replica_name

INTERVAL_S = 1.0
_ANSWER_TIMEOUT_S = 2.0
_CONNECT_REPORT_S = 5.0


def list_replicas(ray: Any, namespaces: set[str]) -> list[ReplicaEndpoint]:
    """Every replica in ``namespaces`` that answered within the round's timeout."""
    refs: list[Any] = []
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["namespace"] not in namespaces or parse_replica_name(actor["name"]) is None:
            continue
        try:
            handle = ray.get_actor(actor["name"], namespace=actor["namespace"])
        except ValueError:  # gone since the listing
            continue
        refs.append(handle.endpoint.remote())
    if not refs:
        return []
    done, _ = ray.wait(refs, num_returns=len(refs), timeout=_ANSWER_TIMEOUT_S)
    out: list[ReplicaEndpoint] = []
    for ref in done:
        try:
            out.append(ray.get(ref))
        except ray.exceptions.RayError:
            continue
    return sorted(out, key=lambda e: (e["app"], e["index"]))


def _exit_when_stdin_closes() -> None:
    # os.read, not sys.stdin: a thread blocked inside the buffered reader makes the interpreter's
    # own exit (Ray turns SIGTERM into sys.exit) abort.
    while os.read(0, 4096):
        pass
    os._exit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.engines.ray_directory")
    parser.add_argument("address", help="the Ray cluster's GCS address, or 'auto'")
    parser.add_argument("namespaces", nargs="+")
    parser.add_argument("--interval", type=float, default=INTERVAL_S)
    args = parser.parse_args(argv)
    threading.Thread(target=_exit_when_stdin_closes, name="stdin-watch", daemon=True).start()

    def say(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    # ray.init keeps trying an address that does not answer for a minute or more: say so early, so
    # that the gateway's start does not wait for it.
    slow = threading.Timer(
        _CONNECT_REPORT_S,
        say,
        ({"error": f"no answer from the Ray cluster at {args.address} yet; still trying"},),
    )
    slow.start()
    try:
        import ray

        ray.init(address=args.address, log_to_driver=False, configure_logging=False)
    except Exception as exc:  # no cluster there (yet): the gateway restarts this process later
        # Ray's ConnectionError says only "failed to connect"; its cause's last line (it holds a whole
        # traceback) says why, e.g. a missing token.
        why = str(exc)
        if exc.__cause__ is not None and str(exc.__cause__).strip():
            why += "; " + str(exc.__cause__).strip().splitlines()[-1]
        say({"error": f"cannot connect to the Ray cluster at {args.address}: {why}"})
        return 1
    finally:
        slow.cancel()
    namespaces = set(args.namespaces)
    while True:
        try:
            say({"replicas": list_replicas(ray, namespaces)})
        except Exception as exc:
            say({"error": f"cannot list the replicas: {type(exc).__name__}: {exc}"})
        time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(main())
