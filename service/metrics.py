"""Prometheus metrics: what is counted, and the helpers services call to count it.

Metrics live in prometheus-client's default registry. With several uvicorn workers set
``PROMETHEUS_MULTIPROC_DIR`` to an empty directory (wiped before each start) for every
worker: prometheus-client then keeps each process's values in files there and ``/metrics``
merges them with a ``MultiProcessCollector``. Counters and histograms are summed over the
workers; the gauges (index size and versions, the same in every worker) are declared with
``multiprocess_mode="livemax"`` so the endpoint reports the largest value among the
workers (uvicorn has no hook to call ``mark_process_dead``, so a replaced worker's last
value stays in the files; versions only grow, so the maximum is still right).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
)

REQUEST_DURATION = Histogram(
    "geo_offers_http_request_duration_seconds",
    "HTTP request latency by method, route template and status class.",
    ["method", "route", "status"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
PINGS = Counter("geo_offers_pings_total", "Pings answered, by reason code.", ["reason"])
OFFERS = Counter("geo_offers_offers_total", "Offers issued, by campaign.", ["campaign"])
CAP_REJECTIONS = Counter(
    "geo_offers_cap_rejections_total",
    'Offers withheld by a frequency cap or budget, by cap (e.g. "campaign:1/86400s").',
    ["cap"],
)
INDEX_FENCES = Gauge(
    "geo_offers_index_fences", "Fences in this replica's index.", multiprocess_mode="livemax"
)
INDEX_VERSION = Gauge(
    "geo_offers_index_version", "Fence data version of the index.", multiprocess_mode="livemax"
)
CAMPAIGNS_VERSION = Gauge(
    "geo_offers_campaigns_version",
    "Campaign data version this replica serves.",
    multiprocess_mode="livemax",
)
IMPORT_DURATION = Histogram(
    "geo_offers_import_duration_seconds",
    "File import duration by kind (geofences|campaigns) and outcome (ok|rejected).",
    ["kind", "outcome"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0),
)

ERASURES_PENDING = Gauge(
    "geo_offers_erasures_pending",
    "Erasures whose database part is done and whose Redis part waits (for Redis to answer).",
    multiprocess_mode="livemax",
)

_CHILDREN: dict[tuple[Any, ...], Any] = {}


def labelled(metric: Any, *labels: str) -> Any:
    """The child of ``metric`` for a label set, looked up once (``labels()`` takes a lock and
    builds a tuple on every call). Only for bounded label sets (methods, route templates,
    status classes, reason codes): the cache keeps every set it has seen."""
    key = (metric, *labels)
    child = _CHILDREN.get(key)
    if child is None:
        child = _CHILDREN[key] = metric.labels(*labels)
    return child


def observe_ping(reason: str) -> None:
    """Count one answered ping by its reason code (``offer_issued``, ``no_trigger``, …)."""
    labelled(PINGS, reason).inc()


def observe_offer(campaign_id: str) -> None:
    OFFERS.labels(campaign_id).inc()


def observe_cap_rejection(cap: str) -> None:
    """Count one offer withheld by ``cap``, e.g. ``"campaign:1/86400s"`` or ``"budget:total"``."""
    CAP_REJECTIONS.labels(cap).inc()


def set_index(fences: int, version: int) -> None:
    INDEX_FENCES.set(fences)
    INDEX_VERSION.set(version)


def set_pending_erasures(count: int) -> None:
    ERASURES_PENDING.set(count)


def set_campaigns_version(version: int) -> None:
    CAMPAIGNS_VERSION.set(version)


@contextlib.contextmanager
def time_import(kind: str) -> Iterator[None]:
    """Time an import of ``kind`` ("geofences" | "campaigns"); outcome "rejected" if it raises.

    >>> with time_import("geofences"):
    ...     pass
    """
    started = time.perf_counter()
    outcome = "rejected"
    try:
        yield
        outcome = "ok"
    finally:
        IMPORT_DURATION.labels(kind, outcome).observe(time.perf_counter() - started)


def metrics_registry() -> CollectorRegistry:
    """The registry to expose: every worker's files in multiprocess mode, else the default."""
    # prometheus-client's own switch, read by the library itself at import; not a setting.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return REGISTRY


def refresh_gauges(state: Any) -> None:
    """Read index and campaign versions off ``app.state`` at scrape time, so the gauges are
    right even where the holders do not call :func:`set_index` themselves."""
    holder = getattr(state, "index_holder", None)
    index = getattr(holder, "index", None)
    if index is not None:
        set_index(len(index), int(index.version))
    campaigns = getattr(getattr(state, "campaign_holder", None), "current", None)
    version = getattr(campaigns, "version", -1)
    if isinstance(version, int) and version >= 0:
        set_campaigns_version(version)
