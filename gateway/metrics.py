"""Prometheus metrics for the request path (served at ``GET /metrics``).

Registered in prometheus-client's default registry so other components' metrics (Redis, the
limiter, spend) appear on the same page. Label children are cached: ``labels()`` takes a lock
and formats strings, which is measurable on the hot path.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest

REQUESTS = Counter(
    "switchyard_requests_total",
    "Chat completion requests, by model name and HTTP status.",
    ["model", "status"],
)
LATENCY = Histogram(
    "switchyard_request_duration_seconds",
    "Time from request arrival to the end of the response, by model name.",
    ["model"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
IN_FLIGHT = Gauge("switchyard_requests_in_flight", "Chat completion requests being served now.")

_request_children: dict[tuple[str, int], Counter] = {}
_latency_children: dict[str, Histogram] = {}
# Callers pick the model name; cap label cardinality so junk names cannot grow memory forever.
_MAX_MODELS = 1000


def observe(model: str, status: int, seconds: float) -> None:
    """Count one finished request."""
    hist = _latency_children.get(model)
    if hist is None:
        if len(_latency_children) >= _MAX_MODELS:
            model = "other"
        hist = _latency_children.get(model) or LATENCY.labels(model)
        _latency_children[model] = hist
    hist.observe(seconds)
    key = (model, status)
    counter = _request_children.get(key)
    if counter is None:
        counter = REQUESTS.labels(model, str(status))
        _request_children[key] = counter
    counter.inc()


def render() -> tuple[bytes, str]:
    """The exposition page and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
