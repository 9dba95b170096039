"""Token, spend and backlog metrics of the spend sink.

Tokens and spend are counted per committed batch, off the request path: one ``inc`` per model and
token type per batch, only for the rows the batch actually inserted (a retried batch counts nothing
twice). The backlog gauge is read at scrape time from the sink's queue.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from decimal import Decimal

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway import metrics
from gateway.live_metrics import register_live
from gateway.pipeline import UsageEvent

TOKENS = Counter(
    "switchyard_tokens_total",
    "Tokens of written spend rows, by model name and type: input (every prompt token, cached ones "
    "included), output, cached (input tokens read from the provider's prompt cache).",
    ["model", "type"],
)
SPEND = Counter(
    "switchyard_spend_usd_total", "Spend of written spend rows in US dollars, by model name.", ["model"]
)


def count_batch(rows: Iterable[tuple[UsageEvent, Decimal]]) -> None:
    """Add the written rows' tokens and spend to the counters (one ``inc`` per label set)."""
    sums: dict[str, list[float]] = defaultdict(lambda: [0, 0, 0, 0.0])
    for event, cost in rows:
        agg = sums[metrics.model_label(event.model)]
        usage = event.usage
        agg[0] += usage.prompt_tokens
        agg[1] += usage.completion_tokens
        agg[2] += usage.cache_read_tokens
        agg[3] += float(cost)
    for model, (inp, out, cached, spend) in sums.items():
        TOKENS.labels(model, "input").inc(inp)
        TOKENS.labels(model, "output").inc(out)
        TOKENS.labels(model, "cached").inc(cached)
        SPEND.labels(model).inc(spend)


BATCH_SECONDS = Histogram(
    "switchyard_spend_batch_write_seconds",
    "Time one spend batch took to write to Postgres (one transaction), failed ones included.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
BATCH_FAILURES = Counter(
    "switchyard_spend_batch_failures_total",
    "Spend batches whose Postgres transaction failed (retried later).",
)


class _BacklogCollector(Collector):
    """``switchyard_spend_queue_records``, read from the sink's queue at scrape time (a collector, not
    a ``Gauge``: under multiprocess mode a gauge would report its file's stale value instead; there
    the workers' readings are summed, see ``gateway.live_metrics``)."""

    def __init__(self) -> None:
        self.pending: Callable[[], int] | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if self.pending is not None:
            yield GaugeMetricFamily(
                "switchyard_spend_queue_records",
                "Spend records queued and not yet written to Postgres.",
                value=self.pending(),
            )


_backlog = _BacklogCollector()
register_live(_backlog)


def watch_backlog(pending: Callable[[], int]) -> None:
    """Report ``pending()`` as the backlog at each scrape (one sink per process)."""
    _backlog.pending = pending
