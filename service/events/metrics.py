"""Prometheus metrics of the event export: recorded, delivered, retried, failed, dropped,
and how far behind each endpoint and the stream relay are.

Counters are counted by the process that did the work (sum them over replicas). The backlog
gauges are read from the database, so every replica reports the same figure (take the max);
in multiprocess mode they keep the largest live value.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from prometheus_client import Counter, Gauge

EVENTS_RECORDED = Counter(
    "geo_offers_events_recorded_total",
    "Events taken from the event log by the relay (each once, whichever replica), by type.",
    ["type"],
)
EVENTS_DELIVERED = Counter(
    "geo_offers_webhook_delivered_total", "Webhook deliveries answered 2xx, by endpoint.",
    ["endpoint"],
)  # fmt: skip
EVENTS_RETRIED = Counter(
    "geo_offers_webhook_retried_total",
    "Webhook attempts that failed and were scheduled again, by endpoint.",
    ["endpoint"],
)
EVENTS_FAILED = Counter(
    "geo_offers_webhook_failed_total",
    "Webhook deliveries given up (retried for webhook_retry_for_s, or answered 410), by endpoint.",
    ["endpoint"],
)
EVENTS_DROPPED = Counter(
    "geo_offers_events_dropped_total",
    "Events lost without being delivered or given up by the retry policy (must stay 0).",
)
EVENTS_STREAMED = Counter(
    "geo_offers_events_streamed_total", "Events added to the Redis Streams by the relay."
)
EVENTS_IMPORTED = Counter(
    "geo_offers_events_imported_total",
    "Visit events moved from their inbox (the Redis inbox streams, or the embedded "
    "default's in-process one) into the event log.",
)
OLDEST_UNDELIVERED = Gauge(
    "geo_offers_webhook_oldest_undelivered_seconds",
    "Age of the oldest event not yet delivered to an enabled endpoint (0 when none), by endpoint.",
    ["endpoint"],
    multiprocess_mode="livemax",
)
OLDEST_UNRELAYED = Gauge(
    "geo_offers_events_oldest_unrelayed_seconds",
    "Age of the oldest event not yet fanned out to webhooks / added to the streams, by relay.",
    ["relay"],
    multiprocess_mode="livemax",
)

_endpoints_shown: set[str] = set()


def set_backlog(oldest: Mapping[str, datetime | None], now: datetime | None = None) -> None:
    """Set the per-endpoint backlog gauge for exactly the endpoints in ``oldest`` (the
    time the oldest undelivered event was recorded, or None); others are removed."""
    now = now or datetime.now(UTC)
    for endpoint in _endpoints_shown - set(oldest):
        OLDEST_UNDELIVERED.remove(endpoint)
    for endpoint, at in oldest.items():
        age = 0.0 if at is None else max(0.0, (now - at).total_seconds())
        OLDEST_UNDELIVERED.labels(endpoint).set(age)
    _endpoints_shown.clear()
    _endpoints_shown.update(oldest)


def set_unrelayed(relay: str, oldest: datetime | None, now: datetime | None = None) -> None:
    now = now or datetime.now(UTC)
    age = 0.0 if oldest is None else max(0.0, (now - oldest).total_seconds())
    OLDEST_UNRELAYED.labels(relay).set(age)
