"""What a database outage means to the gateway.

``is_unreachable`` tells an outage (refused or dropped connections, a server shutting down or starting
up, a connect timeout) from an ordinary query error. ``DatabaseCircuit`` remembers an outage so that:
  * requests fail fast while it lasts (one real attempt per ``retry_interval`` finds out when it ends),
  * the log says it once, then at most one line per ``log_interval`` with a count, never a traceback
    (one traceback per request was 58,000 lines in 20 s),
  * readiness can report it.
``DatabaseUnavailable`` is the 503 a request gets when it truly needs the database.
"""

from __future__ import annotations

import logging
import time

import asyncpg

from gateway.errors import GatewayError

log = logging.getLogger("switchyard.database")

# Server-side states that mean "not serving now" rather than "your query is wrong".
_OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable host, DNS
    TimeoutError,  # connect timeout
    asyncpg.PostgresConnectionError,  # class 08, and connections closed mid-operation
    asyncpg.CannotConnectNowError,  # 57P03: starting up or shutting down
    asyncpg.AdminShutdownError,  # 57P01: pg_ctl stop
    asyncpg.CrashShutdownError,  # 57P02
    asyncpg.TooManyConnectionsError,  # 53300
)


def is_unreachable(exc: BaseException) -> bool:
    """True when ``exc`` says the database cannot be used right now (as opposed to a bad query)."""
    if isinstance(exc, _OUTAGE_ERRORS):
        return True
    # asyncpg reports use of a connection the server already closed as an InterfaceError.
    return isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc)


class DatabaseUnavailable(GatewayError):
    """The request needs Postgres and Postgres is unreachable: 503, retry shortly."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(
            503,
            message or "The database is unreachable; this request needs it. Retry in a few seconds.",
            "service_unavailable",
            "database_unavailable",
            headers={"retry-after": "1"},
        )


class LogThrottle:
    """At most one line per ``interval`` seconds for a recurring condition, with a count of the rest."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last = -float("inf")
        self.suppressed = 0

    def due(self) -> bool:
        """True when a line may be written now (then ``suppressed`` holds how many were skipped)."""
        now = time.monotonic()
        if now - self._last < self.interval:
            self.suppressed += 1
            return False
        self._last = now
        return True

    def reset(self) -> None:
        self._last = -float("inf")
        self.suppressed = 0


class DatabaseCircuit:
    """Outage state shared by everything that talks to the control plane's database."""

    def __init__(self, *, retry_interval: float = 1.0, log_interval: float = 10.0) -> None:
        self.retry_interval = retry_interval
        self.down_since: float | None = None
        self.last_ok = 0.0  # monotonic time of the last successful use
        self._next_attempt = 0.0
        self._throttle = LogThrottle(log_interval)
        self._failures = 0  # attempts that failed during the current outage

    @property
    def reachable(self) -> bool:
        return self.down_since is None

    def allow(self) -> bool:
        """May a caller use the database now? During an outage, one caller per ``retry_interval`` may."""
        if self.down_since is None:
            return True
        now = time.monotonic()
        if now < self._next_attempt:
            return False
        self._next_attempt = now + self.retry_interval
        return True

    def failed(self, exc: BaseException) -> None:
        """An attempt failed with an outage error (``is_unreachable(exc)``)."""
        now = time.monotonic()
        self._next_attempt = now + self.retry_interval
        self._failures += 1
        reason = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
        if self.down_since is None:
            self.down_since = now
            self._throttle.reset()
            self._throttle.due()
            log.error(
                "database unreachable (%s): keys seen recently are served from cache, spend is buffered, "
                "requests that need the database get 503",
                reason,
            )
        elif self._throttle.due():
            log.warning(
                "database still unreachable after %.0f s (%d failed attempts, %d lines suppressed; last: %s)",
                now - self.down_since,
                self._failures,
                self._throttle.suppressed,
                reason,
            )
            self._throttle.suppressed = 0

    def succeeded(self) -> None:
        now = time.monotonic()
        self.last_ok = now
        if self.down_since is not None:
            log.warning(
                "database reachable again after %.1f s (%d failed attempts)",
                now - self.down_since,
                self._failures,
            )
            self.down_since = None
            self._failures = 0
