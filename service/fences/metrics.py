"""Prometheus metrics of the fence index (prometheus_client's default registry).

Per worker (``pid`` label in multiprocess mode): the version served, live fences, overlay
size; counted: deltas applied, fences they changed, full builds by reason; observed: the
delta lag, seconds from a change's commit to its being served here.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

INDEX_VERSION = Gauge(
    "geo_offers_fence_index_served_version",
    "Fence data version this worker serves.",
    multiprocess_mode="liveall",
)
INDEX_FENCES = Gauge(
    "geo_offers_fence_index_live_fences",
    "Fences this worker's index holds.",
    multiprocess_mode="liveall",
)
INDEX_OVERLAY = Gauge(
    "geo_offers_fence_index_overlay_fences",
    "Fences changed since this worker's index base was built (compacted past a threshold).",
    multiprocess_mode="liveall",
)
DELTAS = Counter("geo_offers_fence_deltas_applied", "Change-log deltas applied to the index.")
DELTA_FENCES = Counter(
    "geo_offers_fence_delta_fences", "Fences upserted or deleted by applied deltas."
)
FULL_BUILDS = Counter(
    "geo_offers_fence_index_full_loads",
    "Index bases loaded (startup|gap|rebuild|too_many|behind|compaction), and whether this "
    "worker built it or mapped one another worker of the host built (source=built|mapped).",
    ["reason", "source"],
)
DELTA_LAG = Histogram(
    "geo_offers_fence_delta_lag_seconds",
    "Seconds from a fence change's commit until this worker serves it.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0),
)


def served(version: int, fences: int, overlay: int) -> None:
    INDEX_VERSION.set(version)
    INDEX_FENCES.set(fences)
    INDEX_OVERLAY.set(overlay)
