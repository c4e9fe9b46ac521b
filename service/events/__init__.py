"""Event export (DESIGN §10): the event log, its relays to webhooks and Redis Streams."""

from service.events.log import (
    insert_sql,
    record,
    record_arrived,
    record_user_erased,
    redact_user,
    store_tags,
)
from service.events.types import (
    Event,
    EventType,
    event_id,
    offer_held_out,
    offer_issued,
    offer_redeemed,
    user_erased,
    visit_event,
    visit_events,
)

__all__ = [
    "Event",
    "EventType",
    "event_id",
    "insert_sql",
    "offer_held_out",
    "offer_issued",
    "offer_redeemed",
    "record",
    "record_arrived",
    "record_user_erased",
    "redact_user",
    "store_tags",
    "user_erased",
    "visit_event",
    "visit_events",
]
