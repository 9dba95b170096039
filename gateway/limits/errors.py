"""The errors the limits stage answers with."""

from __future__ import annotations

from gateway.errors import GatewayError


class RateLimited(GatewayError):
    """429 the way OpenAI sends it: ``type`` is ``"requests"`` or ``"tokens"`` (the limit that was hit),
    ``code`` is ``"rate_limit_exceeded"``, with ``Retry-After`` (s) and ``retry-after-ms`` (which the
    openai SDK prefers when it backs off) and the x-ratelimit-* headers of the scope that refused.
    """

    def __init__(self, message: str, *, kind: str, headers: dict[str, str]) -> None:
        super().__init__(429, message, kind, "rate_limit_exceeded", None, headers)
        self.kind = kind


def redis_unavailable() -> GatewayError:
    """503 in fail-closed mode while Redis cannot be reached."""
    return GatewayError(
        503,
        "shared rate-limit / cache store (Redis) is unavailable; try again shortly",
        "service_unavailable",
        "redis_unavailable",
        headers={"retry-after": "1"},
    )
