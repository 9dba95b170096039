"""The deployments of ``ray/<app>`` entries: the app's engine replicas, as the Ray cluster lists them.

Per cluster address a child process (``gateway.engines.ray_directory``: the gateway's process itself
never imports ``ray``) prints the replicas every second. Each replica becomes a deployment of the entry's
``model_name``: ``hosted_vllm/<served model>`` at the replica's URL, with the entry's other params,
marked ``switchyard_engine`` so ``prefix-cache-aware`` reads its prefix-cache summary, and with the
id ``<app>/<index>@<host>:<port>`` (a replica restarted on a new port is a new deployment). When the
list changes the model is rebuilt with ``Router.replace_model``; a replica kept keeps its state
(cooldown, counters), one gone leaves the rotation. Between a replica's death and the next list,
requests that reach it fail over and cool it down like any deployment's.

A cluster that cannot be reached (or a directory process that died) leaves the last list in place
and is retried with a growing pause. Until a first list arrives a model with no other deployment
is not served (404), so startup waits up to ``FIRST_LIST_WAIT_S`` for the directory's first
answer: a list, or the error that the cluster cannot be reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from collections import deque
from typing import Any
from urllib.parse import urlsplit

from gateway import metrics
from gateway.config import ModelEntry
from gateway.engines.ray_target import LOCATION_PARAMS, RayTarget, ray_target
from gateway.routing.deployment import Deployment
from gateway.routing.router import Router

log = logging.getLogger("switchyard.routing.ray")

FIRST_LIST_WAIT_S = 20.0
_RESTART_PAUSE_S = (1.0, 30.0)  # first and longest pause before restarting a directory process
_STDERR_LINES = 20


def replica_id(target: RayTarget, replica: dict[str, Any]) -> str:
    """``<app>/<index>@<host>:<port>``: a replica restarted elsewhere is a new deployment."""
    return f"{target.app}/{replica['index']}@{urlsplit(replica['url']).netloc}"


def replica_deployment(
    entry: ModelEntry, target: RayTarget, replica: dict[str, Any], timeout: float
) -> Deployment:
    """The deployment serving ``entry``'s model name from one replica."""
    params = {k: v for k, v in entry.params.model_dump(exclude_none=True).items() if k not in LOCATION_PARAMS}
    params["model"] = f"hosted_vllm/{replica['model']}"
    params["api_base"] = replica["url"]
    info = entry.model_info.model_dump(exclude_none=True) if entry.model_info is not None else {}
    info["id"] = replica_id(target, replica)
    info["switchyard_engine"] = True
    built = ModelEntry.model_validate({"model_name": entry.model_name, "params": params, "model_info": info})
    return Deployment.from_entry(built, timeout)


class RayDiscovery:
    """Keeps the router's ``ray/<app>`` models equal to their replicas (see the module docstring)."""

    def __init__(self, entries: list[ModelEntry], router: Router, default_timeout: float) -> None:
        self.router = router
        self.default_timeout = default_timeout
        self.targets = [(entry, ray_target(entry)) for entry in entries]
        # Per entry (by position): its replicas' deployments, by id.
        self._found: list[dict[str, Deployment]] = [{} for _ in self.targets]
        # Per model name, the ids of the replicas last put in the router.
        self._applied: dict[str, frozenset[str]] = {}
        self._listed: dict[str, asyncio.Event] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._processes: set[asyncio.subprocess.Process] = set()

    async def start(self, wait_s: float = FIRST_LIST_WAIT_S) -> None:
        """Start one directory process per cluster; return once each listed once, or after ``wait_s``."""
        by_address: dict[str, set[str]] = {}
        for _, target in self.targets:
            by_address.setdefault(target.address, set()).add(target.namespace)
        for address, namespaces in by_address.items():
            self._listed[address] = asyncio.Event()
            task = asyncio.create_task(
                self._watch(address, sorted(namespaces)), name=f"ray-discovery {address}"
            )
            self._tasks.append(task)
        waits = [asyncio.create_task(e.wait()) for e in self._listed.values()]
        _, pending = await asyncio.wait(waits, timeout=wait_s)
        for task in pending:
            task.cancel()
        if pending:
            log.warning(
                "no word from the Ray directory within %gs; its models are served once it lists them", wait_s
            )

    async def _watch(self, address: str, namespaces: list[str]) -> None:
        pause = _RESTART_PAUSE_S[0]
        while True:
            stderr: deque[str] = deque(maxlen=_STDERR_LINES)
            process = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "gateway.engines.ray_directory", address, *namespaces),
                stdin=asyncio.subprocess.PIPE,  # closed when this gateway exits: the child follows
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            self._processes.add(process)
            drain = asyncio.create_task(self._keep_tail(process, stderr))
            try:
                if await self._read(address, process):
                    pause = _RESTART_PAUSE_S[0]
                code = await process.wait()
                await drain
            except asyncio.CancelledError:
                # Shutting down: close() waits for the process this ends.
                if process.returncode is None:
                    process.kill()
                drain.cancel()
                raise
            self._processes.discard(process)
            log.warning(
                "the Ray directory process for %s exited with %s; restarting in %gs%s",
                address,
                code,
                pause,
                "".join("\n  " + line for line in stderr) if code else "",
            )
            await asyncio.sleep(pause)
            pause = min(pause * 2, _RESTART_PAUSE_S[1])

    async def _read(self, address: str, process: asyncio.subprocess.Process) -> bool:
        """Apply each list ``process`` prints until it exits; whether any list came."""
        listed = failing = False
        assert process.stdout is not None
        async for line in process.stdout:
            try:
                message = json.loads(line)
            except ValueError:  # not ours (a library writing to stdout)
                continue
            if "replicas" in message:
                try:
                    self._apply(address, message["replicas"])
                except Exception:  # a malformed entry must not end discovery
                    log.exception("Ray replicas at %s not applied", address)
                listed, failing = True, False
            elif not failing:  # said once per streak, not every second
                log.warning("Ray replicas at %s: %s", address, message.get("error"))
                failing = True
            # Startup waits for the first answer, a list or an error, not longer.
            self._listed[address].set()
        return listed

    @staticmethod
    async def _keep_tail(process: asyncio.subprocess.Process, tail: deque[str]) -> None:
        assert process.stderr is not None
        async for line in process.stderr:
            tail.append(line.decode(errors="replace").rstrip())

    def _apply(self, address: str, replicas: list[dict[str, Any]]) -> None:
        changed: set[str] = set()
        for i, (entry, target) in enumerate(self.targets):
            if target.address != address:
                continue
            old = self._found[i]
            new: dict[str, Deployment] = {}
            for replica in replicas:
                if replica["namespace"] != target.namespace or replica["app"] != target.app:
                    continue
                kept = old.get(replica_id(target, replica))
                # The same object when nothing changed, so the router keeps its routing state.
                if kept is not None and kept.upstream_model == replica["model"]:
                    new[kept.id] = kept
                else:
                    d = replica_deployment(entry, target, replica, self.default_timeout)
                    new[d.id] = d
            if new.keys() != old.keys() or any(new[k] is not old[k] for k in new):
                self._found[i] = new
                changed.add(entry.model_name)
        for name in changed:
            self._replace(name)

    def _replace(self, name: str) -> None:
        ours = [d for found in self._found for d in found.values() if d.model_name == name]
        # Deployments of the same name from elsewhere (the config, stored models) stay.
        applied = self._applied.get(name, frozenset())
        others = [d for d in self.router.deployments if d.model_name == name and d.id not in applied]
        self.router.replace_model(name, others + ours)
        self._applied[name] = frozenset(d.id for d in ours)
        metrics.label_models(self.router.model_names())
        log.info("model %r: Ray replicas %s", name, ", ".join(d.id for d in ours) or "none")

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for process in self._processes:
            # SIGKILL: it holds nothing to flush, and SIGTERM waits while ray.init is connecting.
            if process.returncode is None:
                process.kill()
            await process.wait()
        self._processes.clear()
        self._tasks.clear()


async def start_ray_discovery(
    entries: list[ModelEntry], router: Router, default_timeout: float
) -> RayDiscovery:
    """Serve ``entries``' replicas through ``router`` from now on (``config.ray_engines``)."""
    discovery = RayDiscovery(entries, router, default_timeout)
    await discovery.start()
    return discovery
