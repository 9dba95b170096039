"""Per-request state that travels with a request down the stages."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from gateway.pipeline import Principal


@dataclass(slots=True)
class RequestContext:
    """What every stage may need to know about the request in flight.

    ``started`` is ``time.monotonic()`` at arrival (for durations and deadlines);
    ``started_at`` is unix time (for records). ``metadata`` is free-form for stages to share.
    """

    request_id: str
    principal: Principal
    model: str = ""  # the model name the caller asked for
    stream: bool = False
    started: float = field(default_factory=time.monotonic)
    started_at: float = field(default_factory=time.time)
    metadata: dict[str, Any] = field(default_factory=dict)
