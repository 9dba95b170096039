"""Prometheus metrics for the request path (served at ``GET /metrics``).

Registered in prometheus-client's default registry so other components' metrics (Redis, the
limiter, spend) appear on the same page; under ``serve --workers N`` the page sums every worker
(``render``, prometheus-client's multiprocess mode; gauges without a ``multiprocess_mode`` are
listed per worker with a ``pid`` label). Label children are cached: ``labels()`` takes a lock
and formats strings, which is measurable on the hot path.

The ``model`` label takes only configured model names (``label_models``): callers choose the name
they send, and a label per name would let them grow the page and the process without bound. Any
other name, and a request without one, is counted as ``unknown``.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterable, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

from gateway.live_metrics import LiveFiles, register_live

REQUESTS = Counter(
    "switchyard_requests_total",
    "Requests through the pipeline, by model name, operation (the door: chat, embeddings, "
    "completions, messages, responses), HTTP status and error type (none on success; the error's "
    "code or OpenAI type when it is one of the gateway's own, else other).",
    ["model", "operation", "status", "error_type"],
)
LATENCY = Histogram(
    "switchyard_request_duration_seconds",
    "Time from request arrival to the end of the response, by model name and operation.",
    ["model", "operation"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
OVERHEAD = Histogram(
    "switchyard_gateway_overhead_seconds",
    "Time the gateway itself spent on a routed request (everything but waiting on upstreams).",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
TTFT = Histogram(
    "switchyard_time_to_first_token_seconds",
    "Time from request arrival to the first event of a streamed answer going out, by model name.",
    ["model"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
IN_FLIGHT = Gauge(
    "switchyard_requests_in_flight",
    "Requests being served now (every door).",
    # Under `serve --workers N`: the sum over live workers.
    multiprocess_mode="livesum",
)
UNPRICED = Counter(
    "switchyard_unpriced_requests_total",
    "Requests spent at 0 because no price is known for their deployment's model (provider/model): "
    "neither the deployment's own input_cost_per_token nor the bundled price table has one.",
    ["model"],
)


# The stores every instance shares. Redis: one observation per round trip, however many requests'
# commands it carried (``client`` pipelined: the hot path's limits and cache; pool: redis-py calls
# such as shared cooldowns); its errors are switchyard_redis_errors_total (gateway.redis_pool).
class Tally:
    """A histogram's buckets kept as plain counts, for the hot path: prometheus-client's ``observe``
    (a lock and a bucket search) costs ~1.5 us here, this ~0.2 us. Exported at scrape time."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: over every bound
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds


def cumulative_buckets(bounds: Iterable[float], counts: Iterable[int]) -> list[tuple[str, float]]:
    """Per-bucket counts as Prometheus' cumulative ``le`` buckets (``+Inf`` last)."""
    total, buckets = 0, []
    for bound, count in zip((*map(str, bounds), "+Inf"), counts, strict=True):
        total += count
        buckets.append((bound, total))
    return buckets


class TallyFamily(Collector):
    """A histogram family of ``Tally`` children, one per value of its one label."""

    def __init__(self, name: str, documentation: str, label: str, bounds: tuple[float, ...]) -> None:
        self.name, self.documentation, self.label, self.bounds = name, documentation, label, bounds
        self._children: dict[str, Tally] = {}

    def labels(self, value: str) -> Tally:
        child = self._children.get(value)
        if child is None:
            child = self._children[value] = Tally(self.bounds)
        return child

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=[self.label])
        for value, tally in self._children.items():
            family.add_metric([value], cumulative_buckets(self.bounds, tally.counts), tally.sum)
        yield family


REDIS_ROUNDTRIP = TallyFamily(
    "switchyard_redis_roundtrip_seconds",
    "Time from sending commands to Redis to the reply (a pipelined batch: to its last reply), by client.",
    "client",
    (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
register_live(REDIS_ROUNDTRIP)
POSTGRES_SECONDS = Histogram(
    "switchyard_postgres_operation_seconds",
    "Time a Postgres operation held a pooled connection, waiting for one included (one query, or a "
    "transaction such as a spend batch).",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
POSTGRES_ERRORS = Counter(
    "switchyard_postgres_errors_total",
    "Failed Postgres operations, by kind: unreachable (connection or timeout: the circuit opens), "
    "query (the server refused the statement), circuit_open (not tried: the circuit is open).",
    ["kind"],
)

UNKNOWN_MODEL = "unknown"
# Error types that get their own label: the gateway's own codes and OpenAI's error types. An
# upstream's error code is its own text, so any other value is counted as ``other``.
ERROR_TYPES = frozenset(
    {
        "client_disconnected",
        "rate_limit_exceeded",
        "budget_exceeded",
        "model_not_found",
        "model_not_allowed",
        "invalid_api_key",
        "missing_api_key",
        "key_expired",
        "key_blocked",
        "invalid_json",
        "json_too_deep",
        "redis_unavailable",
        "upstream_error",
        "upstream_stream_error",
        "invalid_request_error",
        "authentication_error",
        "permission_error",
        "not_found_error",
        "rate_limit_error",
        "api_error",
        "api_connection_error",
        "timeout_error",
        "overloaded_error",
        "server_error",
    }
)

_request_children: dict[tuple[str, str, int, str | None], Counter] = {}
_ttft_children: dict[str, Histogram] = {}
_latency_children: dict[tuple[str, str], Histogram] = {}
_models: frozenset[str] = frozenset()


def label_models(names: Iterable[str]) -> None:
    """The model names that get their own label (the configured ones); set when the app is built."""
    global _models
    _models = frozenset(names)


def model_label(name: str) -> str:
    """``name`` if it is a configured model name, else ``unknown`` (for other modules' ``model`` labels)."""
    return name if name in _models else UNKNOWN_MODEL


def observe(model: str, operation: str, status: int, seconds: float, error: str | None = None) -> None:
    """Count one finished request (``operation`` is the door's, a fixed set of names; ``error`` the
    failed request's error code)."""
    if model not in _models:
        model = UNKNOWN_MODEL
    hist = _latency_children.get((model, operation))
    if hist is None:
        hist = _latency_children[(model, operation)] = LATENCY.labels(model, operation)
    hist.observe(seconds)
    if error is not None and error not in ERROR_TYPES:
        error = "other"  # keeps the children below bounded too
    key = (model, operation, status, error)
    counter = _request_children.get(key)
    if counter is None:
        counter = REQUESTS.labels(model, operation, str(status), error or "none")
        _request_children[key] = counter
    counter.inc()


def observe_ttft(model: str, seconds: float) -> None:
    """One streamed answer's time to first token."""
    if model not in _models:
        model = UNKNOWN_MODEL
    hist = _ttft_children.get(model)
    if hist is None:
        hist = _ttft_children[model] = TTFT.labels(model)
    hist.observe(seconds)


def render() -> tuple[bytes, str]:
    """The exposition page and its content type.

    Under ``serve --workers N`` (``PROMETHEUS_MULTIPROC_DIR`` set by the supervisor) every worker
    writes its values to files there, and the page is the sum over all workers, whichever answers;
    scrape-time collectors too (``gateway.live_metrics``).
    """
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        registry.register(LiveFiles(directory))  # what collectors compute at scrape time, every worker's
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
