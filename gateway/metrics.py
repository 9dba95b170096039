"""Prometheus metrics for the request path (served at ``GET /metrics``).

Registered in prometheus-client's default registry so other components' metrics (Redis, the
limiter, spend) appear on the same page. Label children are cached: ``labels()`` takes a lock
and formats strings, which is measurable on the hot path.

The ``model`` label takes only configured model names (``label_models``): callers choose the name
they send, and a label per name would let them grow the page and the process without bound. Any
other name, and a request without one, is counted as ``unknown``.
"""

from __future__ import annotations

from collections.abc import Iterable

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

UNKNOWN_MODEL = "unknown"

_request_children: dict[tuple[str, int], Counter] = {}
_latency_children: dict[str, Histogram] = {}
_models: frozenset[str] = frozenset()


def label_models(names: Iterable[str]) -> None:
    """The model names that get their own label (the configured ones); set when the app is built."""
    global _models
    _models = frozenset(names)


def observe(model: str, status: int, seconds: float) -> None:
    """Count one finished request."""
    if model not in _models:
        model = UNKNOWN_MODEL
    hist = _latency_children.get(model)
    if hist is None:
        hist = _latency_children[model] = LATENCY.labels(model)
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
