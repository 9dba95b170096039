"""Rate-limit refusals, counted on the refusal path only (an admitted request costs nothing here)."""

from __future__ import annotations

from prometheus_client import Counter

REFUSALS = Counter(
    "switchyard_rate_limit_refusals_total",
    "Requests refused with 429 by a rate limit, by scope kind (key, team, user, key_model, "
    "team_model, user_model, model, global) and the limit hit (requests, tokens, parallel).",
    ["scope", "limit"],
)


def count_refusal(scope: str, limit: str) -> None:
    """Count one refusal; ``scope`` is the scope's kind (a fixed set), never its id."""
    REFUSALS.labels(scope, limit).inc()
