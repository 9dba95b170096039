"""Routing metrics: retries, fallbacks, upstream failures and cooldowns (failure paths only), and
each deployment's health read from its cooldown deadline at scrape time.

Labels are configured names: deployment ids and model names from the config (a name served by a
wildcard entry is ``unknown``, as callers choose it).
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway import metrics
from gateway.live_metrics import register_live
from gateway.routing.state import DeploymentState

RETRIES = Counter(
    "switchyard_retries_total", "Upstream attempts retried within a model name after a failure.", ["model"]
)
FALLBACKS = Counter(
    "switchyard_fallbacks_total",
    "Requests that moved to a fallback model name, by the model that failed and the fallback.",
    ["model", "fallback"],
)
UPSTREAM_FAILURES = Counter(
    "switchyard_upstream_failures_total",
    "Failed upstream attempts, by deployment id and failure class (retryable, deployment, request, "
    "context_window, content_policy).",
    ["deployment", "failure"],
)
COOLDOWNS = Counter(
    "switchyard_deployment_cooldowns_total", "Times a deployment was taken out of rotation.", ["deployment"]
)


def count_retry(model: str) -> None:
    RETRIES.labels(metrics.model_label(model)).inc()


def count_fallback(model: str, fallback: str) -> None:
    FALLBACKS.labels(metrics.model_label(model), metrics.model_label(fallback)).inc()


def count_failure(deployment: str, failure: str) -> None:
    UPSTREAM_FAILURES.labels(deployment, failure).inc()


def count_cooldown(deployment: str) -> None:
    COOLDOWNS.labels(deployment).inc()


class _HealthCollector(Collector):
    """``switchyard_deployment_healthy``: 1 while a deployment is not cooling down, else 0."""

    def __init__(self) -> None:
        self._source: Callable[[], Iterable[DeploymentState]] | None = None

    def watch(self, source: Callable[[], Iterable[DeploymentState]]) -> None:
        self._source = source

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "switchyard_deployment_healthy",
            "1 while the deployment is in rotation, 0 while it is cooling down after failures.",
            labels=["deployment", "model"],
        )
        states = self._source() if self._source is not None else ()
        now = time.time()
        for s in states:
            family.add_metric([s.id, s.model_name], 0.0 if s.cooldown_until > now else 1.0)
        yield family


_health = _HealthCollector()
# Under serve --workers N: in rotation only if every worker has it in rotation.
register_live(_health, merge={"switchyard_deployment_healthy": "min"})


class _Routes(Protocol):
    states: list[DeploymentState]


def watch_deployments(router: _Routes) -> None:
    """Report ``router.states`` as deployment health at each scrape (the latest router built; held
    weakly so a router that is gone reports nothing, and models changed at run time are seen)."""
    ref = weakref.ref(router)

    def current() -> Iterable[DeploymentState]:
        live = ref()
        return live.states if live is not None else ()

    _health.watch(current)
