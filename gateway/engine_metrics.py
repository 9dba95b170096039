"""The local engines' numbers on ``/metrics``, read from each engine's snapshot at scrape time.

The engine keeps plain counters of its own (``local_engine.engine.stats``; it imports no metrics
library); this collector turns them into Prometheus families labelled by the local model's
configured upstream name. Nothing is read unless a ``local/`` deployment has started its engine.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from gateway.live_metrics import register_live
from gateway.metrics import cumulative_buckets
from local_engine.engine.stats import TPOT_BUCKETS  # plain Python: no torch
from providers.registry import ProviderRegistry


class _Engines(Protocol):
    def engines(self) -> list[tuple[str, Any]]: ...


class _EngineCollector(Collector):
    def __init__(self) -> None:
        self._registry: weakref.ref[ProviderRegistry] | None = None

    def watch(self, registry: ProviderRegistry) -> None:
        self._registry = weakref.ref(registry)

    def _snapshots(self) -> list[tuple[str, Any]]:
        registry = self._registry() if self._registry is not None else None
        local: _Engines | None = registry.built("local") if registry is not None else None  # type: ignore[assignment]
        if local is None:
            return []
        found = []
        for model, engine in local.engines():
            snap = engine.snapshot()
            if snap is not None:
                found.append((model, snap))
        return found

    def collect(self) -> Iterator[Metric]:
        snaps = self._snapshots()
        if not snaps:
            return
        gauges = {
            "running": GaugeMetricFamily(
                "switchyard_engine_requests_running",
                "Sequences in the engine's running batch.",
                labels=["model"],
            ),
            "waiting": GaugeMetricFamily(
                "switchyard_engine_requests_waiting", "Sequences queued for the engine.", labels=["model"]
            ),
            "kv": GaugeMetricFamily(
                "switchyard_engine_kv_cache_usage_ratio",
                "Share of the engine's KV-cache blocks in use (0 to 1).",
                labels=["model"],
            ),
            "rate": GaugeMetricFamily(
                "switchyard_engine_generation_tokens_per_second",
                "Tokens the engine generated per second over the last 10 whole seconds.",
                labels=["model"],
            ),
        }
        counters = {
            "queries": CounterMetricFamily(
                "switchyard_engine_prefix_cache_queries_tokens",
                "Prompt tokens looked up in the engine's prefix cache (hit rate: hits / queries).",
                labels=["model"],
            ),
            "hits": CounterMetricFamily(
                "switchyard_engine_prefix_cache_hits_tokens",
                "Prompt tokens found in the engine's prefix cache (not computed again).",
                labels=["model"],
            ),
            "generated": CounterMetricFamily(
                "switchyard_engine_generation_tokens", "Tokens the engine generated.", labels=["model"]
            ),
            "finished": CounterMetricFamily(
                "switchyard_engine_requests_finished", "Requests the engine finished.", labels=["model"]
            ),
            "drafts": CounterMetricFamily(
                "switchyard_engine_spec_decode_drafts",
                "Speculative decoding: draft runs (prompt-lookup proposals) the engine verified.",
                labels=["model"],
            ),
            "draft_tokens": CounterMetricFamily(
                "switchyard_engine_spec_decode_draft_tokens",
                "Speculative decoding: draft tokens verified (acceptance rate: accepted / draft tokens).",
                labels=["model"],
            ),
            "accepted_tokens": CounterMetricFamily(
                "switchyard_engine_spec_decode_accepted_tokens",
                "Speculative decoding: draft tokens accepted (each saved one decode step).",
                labels=["model"],
            ),
        }
        tpot = HistogramMetricFamily(
            "switchyard_engine_time_per_output_token_seconds",
            "Per finished request: decode time over its output tokens after the first.",
            labels=["model"],
        )
        for model, s in snaps:
            gauges["running"].add_metric([model], s.running)
            gauges["waiting"].add_metric([model], s.waiting)
            gauges["kv"].add_metric(
                [model], s.kv_blocks_used / s.kv_blocks_total if s.kv_blocks_total else 0.0
            )
            gauges["rate"].add_metric([model], s.generation_tokens_per_s)
            counters["queries"].add_metric([model], s.prefix_cache_query_tokens)
            counters["hits"].add_metric([model], s.prefix_cache_hit_tokens)
            counters["generated"].add_metric([model], s.generation_tokens)
            counters["finished"].add_metric([model], s.finished_requests)
            counters["drafts"].add_metric([model], s.spec_drafts)
            counters["draft_tokens"].add_metric([model], s.spec_draft_tokens)
            counters["accepted_tokens"].add_metric([model], s.spec_accepted_tokens)
            tpot.add_metric([model], cumulative_buckets(TPOT_BUCKETS, s.tpot_counts), s.tpot_sum)
        yield from gauges.values()
        yield from counters.values()
        yield tpot


_engines = _EngineCollector()
# Under serve --workers N each worker runs its own engine: a share of blocks in use is the busiest
# worker's, every other number the sum.
register_live(_engines, merge={"switchyard_engine_kv_cache_usage_ratio": "max"})


def watch_engines(registry: ProviderRegistry) -> None:
    """Report the local engines ``registry``'s ``local`` adapter has started (the latest registry
    built; held weakly)."""
    _engines.watch(registry)
