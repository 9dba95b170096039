"""How many gateway instances share this Redis, known even while Redis is down.

For ``redis_failure_mode: divide``: while Redis is up, each instance heartbeats its id into one
sorted set (``heartbeat.lua``) and keeps the live count Redis answers with. During an outage it
cannot ask, so it uses the last count it saw; an instance that never reached Redis counts 1
(the whole limit, as fail-open).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import Gauge

from gateway.redis_pool import LuaScript, RedisPool, RedisUnavailable

log = logging.getLogger("switchyard.limits")

HEARTBEAT = LuaScript.from_file(Path(__file__).parent / "heartbeat.lua")
# An instance counts as live for this many heartbeat intervals after its last one, so one late
# heartbeat (a busy event loop, a slow Redis reply) does not drop it from the count.
LIVENESS_INTERVALS = 3

LIVE_INSTANCES = Gauge(
    "switchyard_limits_live_instances",
    "Gateway instances sharing this Redis, as last seen (limits are divided by it during a Redis "
    "outage in redis_failure_mode divide).",
)


def _instance_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(slots=True)
class InstanceCount:
    """The heartbeat of this instance and the last live-instance count Redis reported."""

    pool: RedisPool
    key: str
    interval_s: float
    count: int = 1
    instance_id: str = field(default_factory=_instance_id)
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start heartbeating (idempotent; needs a running event loop)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._beat_forever())

    @property
    def started(self) -> bool:
        return self._task is not None

    async def beat(self) -> int:
        """One heartbeat; returns the live count (the last known one when Redis is down)."""
        ttl_ms = int(self.interval_s * LIVENESS_INTERVALS * 1000)
        try:
            reply = await self.pool.evalsha("instances", HEARTBEAT, [self.key], [self.instance_id, ttl_ms])
        except RedisUnavailable:
            return self.count
        count = max(1, int(reply))
        if count != self.count:
            log.info("gateway instances sharing redis: %d", count)
        self.count = count
        LIVE_INSTANCES.set(count)
        return count

    async def _beat_forever(self) -> None:
        while True:
            try:
                await self.beat()
            except Exception:
                # Never let one odd reply end the heartbeat: the count would freeze silently.
                log.exception("instance heartbeat failed")
            await asyncio.sleep(self.interval_s)

    async def close(self) -> None:
        """Stop, and leave the set at once (so the others' count drops now, not after the TTL)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            with contextlib.suppress(RedisUnavailable):
                await self.pool.execute("instances", "ZREM", self.key, self.instance_id)
