"""Health probes and the Prometheus page.

``/health/liveliness``: the process answers (always 200 while it does). ``/health/readiness``: the
lifespan finished and the request path is wired (``Services`` built), so traffic may be sent; it also
reports the control plane's database. Neither needs a key. After SIGTERM readiness answers 503
``{"status": "draining"}`` while in-flight requests finish (``gateway.server.drain``).

Database unreachable: readiness answers 200 with ``{"status": "degraded", "database": "unreachable"}``.
Not a 503, on purpose: the gateway still serves every key seen recently (from cache) and the master key,
and buffers spend; every replica shares the same database, so a failing readiness would take all of them
out of the load balancer at once and turn a partial outage into a total one. Monitoring alerts on
``status``; orchestrators keep routing.
"""

from __future__ import annotations

import os

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway import metrics

# How long readiness waits for ``SELECT 1`` (a probe must answer quickly even when the database hangs).
_DB_PROBE_TIMEOUT_S = 1.0


def _json(obj: object, status: int = 200) -> Response:
    return Response(orjson.dumps(obj), status, media_type="application/json")


async def liveliness(request: Request) -> Response:
    return _json({"status": "alive"})


async def readiness(request: Request) -> Response:
    services = getattr(request.app.state, "services", None)
    if services is None:
        return _json({"status": "starting"}, 503)
    if getattr(request.app.state, "draining", False):
        # SIGTERM received (gateway.server.drain): send no new traffic here.
        return _json({"status": "draining"}, 503)
    body: dict[str, object] = {
        "status": "healthy",
        "models": len(services.router.model_names()),
        "auth": "key required" if services.auth.requires_key else "anonymous (local mode)",
        # Which process answered (under `serve --workers N`, one of the workers).
        "pid": os.getpid(),
    }
    plane = services.extras.get("control_plane")
    if plane is not None:
        reachable = await plane.db.pool.reachable(probe_timeout_s=_DB_PROBE_TIMEOUT_S)
        body["database"] = "reachable" if reachable else "unreachable"
        if not reachable:
            body["status"] = "degraded"
            body["spend_buffered"] = plane.sink.pending
    return _json(body)


async def prometheus(request: Request) -> Response:
    body, content_type = metrics.render()
    return Response(body, headers={"content-type": content_type})
