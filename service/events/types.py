"""The events other systems learn about (DESIGN §10): one vocabulary, one envelope, stable ids.

An event is ``{id, type, occurred_at, data}``. ``data`` names stores, devices, users,
campaigns and offers by id, never a coordinate. The id is derived from the identity of what
happened (the offer, the redemption, the ping's step at a store), so recording the same thing
twice — a retried ping, a replayed batch — yields the same id and, in the log, one row.

>>> e = offer_redeemed(offer_id="o1", campaign_id="c", coupon_code="X", store_id="s",
...     device_id="d", user_id=None, amount=None, redeemed_store_id=None,
...     redeemed_at=datetime(2026, 1, 1, tzinfo=UTC))
>>> e.id == offer_redeemed(offer_id="o1", campaign_id="c", coupon_code="X", store_id="s",
...     device_id="d", user_id=None, amount=3.0, redeemed_store_id=None,
...     redeemed_at=datetime(2026, 1, 2, tzinfo=UTC)).id
True
>>> sorted(e.envelope())
['data', 'id', 'occurred_at', 'type']
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from service.ids import uuid5_hex
from service.timeutil import iso_z

_EVENT_NS = uuid.UUID("6f1d2a4e-9b3c-4f7e-a1d5-3c2b8e9f0a17")


class EventType(StrEnum):
    visit_entered = "visit.entered"
    visit_dwelled = "visit.dwelled"
    visit_exited = "visit.exited"
    offer_issued = "offer.issued"
    offer_held_out = "offer.held_out"
    offer_redeemed = "offer.redeemed"
    user_erased = "user.erased"


#: The visit event of each device-state event type (``geofences.visits`` names).
VISIT_TYPES: dict[str, EventType] = {
    "enter": EventType.visit_entered,
    "dwell": EventType.visit_dwelled,
    "exit": EventType.visit_exited,
}


def event_id(type_: EventType, *identity: str) -> str:
    """The stable id of the event of ``type_`` about ``identity``: ``evt_`` + 32 hex digits.

    >>> event_id(EventType.offer_issued, "abc") == event_id(EventType.offer_issued, "abc")
    True
    >>> event_id(EventType.offer_issued, "abc") != event_id(EventType.offer_redeemed, "abc")
    True
    """
    # "|" cannot be confused across parts: each part's length is part of the name.
    name = "|".join([type_.value, *(f"{len(p)}:{p}" for p in identity)])
    return "evt_" + uuid5_hex(_EVENT_NS, name)


@dataclass(frozen=True, slots=True)
class Event:
    """One event as recorded. ``store_tags`` (the store's tags when it happened) serve
    webhook subscriptions by tag; they are not part of the envelope."""

    id: str
    type: EventType
    occurred_at: datetime
    data: dict[str, Any]
    store_tags: tuple[str, ...] = field(default=())

    @property
    def store_id(self) -> str | None:
        store = self.data.get("store_id")
        return str(store) if store is not None else None

    @property
    def partition_key(self) -> str:
        """What the stream partition is chosen by: the device when there is one, else the user
        (so one device's visits and offers land in one partition, in order)."""
        return str(self.data.get("device_id") or self.data.get("user_id") or "")

    def envelope(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type.value,
            "occurred_at": iso_z(self.occurred_at),
            "data": self.data,
        }


def _utc(at: datetime) -> datetime:
    if at.tzinfo is None:
        raise ValueError("event times must be timezone-aware")
    return at.astimezone(UTC)


def _tags(tags: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(tags)))


def visit_event(
    kind: str,
    *,
    device_id: str,
    user_id: str | None,
    store_id: str,
    ping_key: str,
    occurred_at: datetime,
    store_tags: Iterable[str] = (),
    dwell_s: float | None = None,
) -> Event:
    """``visit.entered`` / ``visit.dwelled`` / ``visit.exited`` from a device-state event
    (``kind`` is ``enter``, ``dwell`` or ``exit``) of the ping ``ping_key`` at ``store_id``.
    ``occurred_at`` is the ping's timestamp."""
    type_ = VISIT_TYPES[kind]
    data: dict[str, Any] = {
        "store_id": store_id,
        "device_id": device_id,
        "user_id": user_id,
        "ping_id": ping_key,
    }
    if dwell_s is not None:
        data["dwell_s"] = round(dwell_s, 3)
    return Event(
        event_id(type_, device_id, ping_key, store_id),
        type_,
        _utc(occurred_at),
        data,
        _tags(store_tags),
    )


def visit_events(
    steps: Iterable[Any],
    *,
    device_id: str,
    user_id: str | None,
    ping_key: str,
    occurred_at: datetime,
    tags_of: Callable[[str], Iterable[str]] = lambda _store: (),
) -> list[Event]:
    """The visit events of one ping's state step: ``steps`` are its
    :class:`geofences.visits.VisitEvent` s (``type``, ``store_id``, ``dwell_s``);
    ``tags_of(store_id)`` gives a store's tags (e.g. from the fence index)."""
    return [
        visit_event(
            v.type,
            device_id=device_id,
            user_id=user_id,
            store_id=v.store_id,
            ping_key=ping_key,
            occurred_at=occurred_at,
            store_tags=tags_of(v.store_id),
            dwell_s=v.dwell_s,
        )
        for v in steps
    ]


def offer_issued(
    *,
    offer_id: str,
    campaign_id: str,
    store_id: str,
    device_id: str | None,
    user_id: str | None,
    ping_key: str,
    channel: str,
    coupon_code: str,
    title: str,
    message: str | None,
    value: float,
    issued_at: datetime,
    expires_at: datetime,
    store_tags: Iterable[str] = (),
) -> Event:
    """``offer.issued``, recorded in the transaction that writes the offer row. The id is
    the offer's: one offer, one event, however often its ping is retried."""
    data = {
        "offer_id": offer_id,
        "campaign_id": campaign_id,
        "store_id": store_id,
        "device_id": device_id,
        "user_id": user_id,
        "ping_id": ping_key,
        "channel": channel,
        "coupon_code": coupon_code,
        "title": title,
        "message": message,
        "value": value,
        "expires_at": iso_z(expires_at),
    }
    type_ = EventType.offer_issued
    return Event(event_id(type_, offer_id), type_, _utc(issued_at), data, _tags(store_tags))


def offer_held_out(
    *,
    campaign_id: str,
    store_id: str,
    device_id: str | None,
    user_id: str | None,
    ping_key: str,
    occurred_at: datetime,
    store_tags: Iterable[str] = (),
) -> Event:
    """``offer.held_out``: the user is in the campaign's control group and got no offer.
    One per campaign, device and ping (the same identity the issued offer id is made of)."""
    data = {
        "campaign_id": campaign_id,
        "store_id": store_id,
        "device_id": device_id,
        "user_id": user_id,
        "ping_id": ping_key,
    }
    type_ = EventType.offer_held_out
    return Event(
        event_id(type_, campaign_id, device_id or "", ping_key),
        type_,
        _utc(occurred_at),
        data,
        _tags(store_tags),
    )


def offer_redeemed(
    *,
    offer_id: str,
    campaign_id: str,
    coupon_code: str,
    store_id: str,
    device_id: str | None,
    user_id: str | None,
    amount: float | None,
    redeemed_store_id: str | None,
    redeemed_at: datetime,
    store_tags: Iterable[str] = (),
) -> Event:
    """``offer.redeemed``: an offer redeems once, so its id is the offer's. ``store_id`` is
    the store the offer was issued for; ``redeemed_store_id`` the till's, when sent."""
    data = {
        "offer_id": offer_id,
        "campaign_id": campaign_id,
        "coupon_code": coupon_code,
        "store_id": store_id,
        "device_id": device_id,
        "user_id": user_id,
        "amount": amount,
        "redeemed_store_id": redeemed_store_id,
    }
    type_ = EventType.offer_redeemed
    return Event(event_id(type_, offer_id), type_, _utc(redeemed_at), data, _tags(store_tags))


def user_erased(*, user_id: str, erasure_id: str, occurred_at: datetime) -> Event:
    """``user.erased``, recorded with the erasure (``erasure_id``: the erasure request's own
    id, so a resumed or retried erasure records it once). Sent to every endpoint subscribed
    to the type, whatever its store tags: every system holding the user's data must hear."""
    type_ = EventType.user_erased
    data = {"user_id": user_id, "erasure_id": erasure_id}
    return Event(event_id(type_, user_id, erasure_id), type_, _utc(occurred_at), data)
