"""The one request pipeline every door goes through.

- ``stages``: the protocols of each stage (who is calling, limits, spend) and their records.
- ``conductor``: runs the stages in order for any door (``gateway.doors``), settling and
  accounting exactly once on every exit path.
- ``respond``: the ASGI answers (JSON, SSE, errors) and the client-disconnect watch.

Only the stage types are exported here, so importing them does not import the router.
"""

from gateway.pipeline.stages import (
    Admission,
    KeyResolver,
    Limiter,
    LimitScope,
    Principal,
    SpendSink,
    Usage,
    UsageEvent,
)

__all__ = [
    "Admission",
    "KeyResolver",
    "LimitScope",
    "Limiter",
    "Principal",
    "SpendSink",
    "Usage",
    "UsageEvent",
]
