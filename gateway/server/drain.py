"""A uvicorn server that tells the load balancer it is leaving before it stops.

On SIGTERM (or SIGINT) ``/health/readiness`` answers 503 ``draining`` at once (the app's
``state.draining``), then uvicorn's own shutdown runs: the listener closes, idle keep-alive
connections close, and in-flight requests and streams get ``general_settings.graceful_shutdown_s``
to finish. Then the lifespan closes the services, which flushes the spend sink (and its journal)
to Postgres and closes the pools, so every response that left with a 200 has its spend row.
"""

from __future__ import annotations

from types import FrameType

import uvicorn
from starlette.datastructures import State


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app_state: State) -> None:
        super().__init__(config)
        self._app_state = app_state

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Readiness first: a probe answered between here and the listener closing says "draining".
        self._app_state.draining = True
        super().handle_exit(sig, frame)
