"""Health probes and the Prometheus page.

``/health/liveliness``: the process answers. ``/health/readiness``: the lifespan finished and the
request path is wired (``Services`` built), so traffic may be sent. Neither needs a key.
"""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway import metrics


def _json(obj: object, status: int = 200) -> Response:
    return Response(orjson.dumps(obj), status, media_type="application/json")


async def liveliness(request: Request) -> Response:
    return _json({"status": "alive"})


async def readiness(request: Request) -> Response:
    services = getattr(request.app.state, "services", None)
    if services is None:
        return _json({"status": "starting"}, 503)
    return _json(
        {
            "status": "healthy",
            "models": len(services.router.model_names()),
            "auth": "key required" if services.auth.requires_key else "anonymous (local mode)",
        }
    )


async def prometheus(request: Request) -> Response:
    body, content_type = metrics.render()
    return Response(body, headers={"content-type": content_type})
