"""Metrics computed at scrape time (collectors), correct under ``serve --workers N`` too.

One process: a live collector sits in the default registry and is read at each scrape. Under
``serve --workers N`` (prometheus-client's multiprocess mode) the page is built from the workers'
metric files, which hold only what Counter/Gauge/Histogram objects wrote there: a collector's
values (spend backlog, deployment health, the local engines) would be missing. So each worker also
writes its live collectors' families to ``live-<pid>.json`` in that directory every second
(``start_publishing``), and the page merges the files of the workers that are alive with the
answering worker's own fresh reading: counters, histograms and gauges summed, or a gauge's own
rule (``register_live(merge=...)``: min, max). A worker that died drops out (its file is removed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from pathlib import Path

from prometheus_client import REGISTRY
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

log = logging.getLogger("switchyard.metrics")

PUBLISH_INTERVAL_S = 1.0
_MERGES: dict[str, Callable[[Iterable[float]], float]] = {"sum": sum, "min": min, "max": max}

_live: list[Collector] = []
_merge: dict[str, str] = {}  # family name -> rule, when not "sum"

# (family name, type, help, [(sample name, labels, value)])
Family = tuple[str, str, str, list[tuple[str, dict[str, str], float]]]


def register_live(collector: Collector, merge: Mapping[str, str] | None = None) -> None:
    """Register a scrape-time collector; ``merge`` names the gauges not summed across workers
    (family name -> "min" or "max")."""
    REGISTRY.register(collector)
    _live.append(collector)
    for name, rule in (merge or {}).items():
        if rule not in _MERGES:
            raise ValueError(f"merge rule {rule!r}: one of {sorted(_MERGES)}")
        _merge[name] = rule


def _read() -> list[Family]:
    families: list[Family] = []
    for collector in _live:
        for metric in collector.collect():
            samples = [
                (s.name, dict(s.labels), s.value)
                for s in metric.samples
                if not s.name.endswith("_created")  # per process: meaningless summed
            ]
            families.append((metric.name, metric.type, metric.documentation, samples))
    return families


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LiveFiles(Collector):
    """Every live worker's collectors, merged (multiprocess mode's ``/metrics``)."""

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)

    def collect(self) -> Iterator[Metric]:
        readings = [_read()]  # this worker's, fresh
        me = os.getpid()
        for path in self.directory.glob("live-*.json"):
            pid = int(path.stem.removeprefix("live-"))
            if pid == me:
                continue
            if not _alive(pid):
                path.unlink(missing_ok=True)
                continue
            with contextlib.suppress(OSError, ValueError):
                readings.append([tuple(f) for f in json.loads(path.read_text())])  # type: ignore[misc]
        yield from _merged(readings)


def _merged(readings: list[list[Family]]) -> Iterator[Metric]:
    order: dict[str, tuple[str, str]] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], list[float]]] = {}
    for families in readings:
        for name, kind, doc, samples in families:
            order.setdefault(name, (kind, doc))
            per_sample = values.setdefault(name, {})
            for sample_name, labels, value in samples:
                per_sample.setdefault((sample_name, tuple(sorted(labels.items()))), []).append(value)
    for name, (kind, doc) in order.items():
        combine = _MERGES[_merge.get(name, "sum")]
        metric = Metric(name, doc, kind)
        for (sample_name, labels), found in values[name].items():
            metric.add_sample(sample_name, dict(labels), combine(found))
        yield metric


def _publish(path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(_read()))
    os.replace(tmp, path)  # readers never see half a file


def start_publishing() -> Callable[[], Awaitable[None]] | None:
    """Under multiprocess mode, write this worker's live families every second; returns the closer
    (stops and removes the file), or None when there is nothing to do."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return None
    path = Path(directory) / f"live-{os.getpid()}.json"

    async def loop() -> None:
        while True:
            try:
                _publish(path)
            except Exception:  # a collector's failure must not end the loop: the next try may work
                log.exception("writing live metrics failed")
            await asyncio.sleep(PUBLISH_INTERVAL_S)

    task = asyncio.get_running_loop().create_task(loop(), name="live-metrics")

    async def close() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        path.unlink(missing_ok=True)

    return close
