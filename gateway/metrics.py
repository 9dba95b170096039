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
    "Requests through the pipeline, by model name, operation (the door: chat, embeddings, "
    "completions, messages, responses) and HTTP status.",
    ["model", "operation", "status"],
)
LATENCY = Histogram(
    "switchyard_request_duration_seconds",
    "Time from request arrival to the end of the response, by model name and operation.",
    ["model", "operation"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
IN_FLIGHT = Gauge("switchyard_requests_in_flight", "Requests being served now (every door).")
UNPRICED = Counter(
    "switchyard_unpriced_requests_total",
    "Requests spent at 0 because no price is known for their deployment's model (provider/model): "
    "neither the deployment's own input_cost_per_token nor the bundled price table has one.",
    ["model"],
)

UNKNOWN_MODEL = "unknown"

_request_children: dict[tuple[str, str, int], Counter] = {}
_latency_children: dict[tuple[str, str], Histogram] = {}
_models: frozenset[str] = frozenset()


def label_models(names: Iterable[str]) -> None:
    """The model names that get their own label (the configured ones); set when the app is built."""
    global _models
    _models = frozenset(names)


def model_label(name: str) -> str:
    """``name`` if it is a configured model name, else ``unknown`` (for other modules' ``model`` labels)."""
    return name if name in _models else UNKNOWN_MODEL


def observe(model: str, operation: str, status: int, seconds: float) -> None:
    """Count one finished request (``operation`` is the door's, a fixed set of names)."""
    if model not in _models:
        model = UNKNOWN_MODEL
    hist = _latency_children.get((model, operation))
    if hist is None:
        hist = _latency_children[(model, operation)] = LATENCY.labels(model, operation)
    hist.observe(seconds)
    key = (model, operation, status)
    counter = _request_children.get(key)
    if counter is None:
        counter = REQUESTS.labels(model, operation, str(status))
        _request_children[key] = counter
    counter.inc()


def render() -> tuple[bytes, str]:
    """The exposition page and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
