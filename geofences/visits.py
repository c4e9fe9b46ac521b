"""Turning a device's pings into enter / dwell / exit events (DESIGN §3).

Pure logic over a :class:`~geofences.index.FenceIndex`; the service persists the
:class:`DeviceState` between pings (Redis or in-process) and makes each step atomic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


class _Fence(Protocol):
    store_id: str
    exit_margin_m: float

    def still_inside(self, lat: float, lng: float, margin_m: float) -> bool: ...


class _Index(Protocol):
    def match(self, lat: float, lng: float) -> list[Any]: ...

    def get(self, store_id: str) -> Any: ...


@dataclass(slots=True)
class Visit:
    entered_at: float  # ping timestamp, epoch seconds
    dwell_sent: bool = False


@dataclass(slots=True)
class DeviceState:
    last_ts: float
    inside: dict[str, Visit] = field(default_factory=dict)

    def to_doc(self) -> dict[str, Any]:
        return {
            "t": self.last_ts,
            "in": {k: [v.entered_at, v.dwell_sent] for k, v in self.inside.items()},
        }

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> DeviceState:
        return cls(
            last_ts=float(doc["t"]),
            inside={k: Visit(float(v[0]), bool(v[1])) for k, v in doc.get("in", {}).items()},
        )


@dataclass(frozen=True, slots=True)
class VisitEvent:
    type: str  # enter | dwell | exit
    store_id: str
    distance_m: float | None = None
    dwell_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "store_id": self.store_id}
        if self.distance_m is not None:
            out["distance_m"] = round(self.distance_m, 2)
        if self.dwell_s is not None:
            out["dwell_s"] = round(self.dwell_s, 3)
        return out


def step(
    state: DeviceState | None,
    index: _Index,
    lat: float,
    lng: float,
    ts: float,
    *,
    dwell_s: float,
    state_ttl_s: float,
    exit_margin_m: float | None = None,
    matches: list[Any] | None = None,
) -> tuple[DeviceState, list[VisitEvent]]:
    """Advance one device by one accurate, in-order ping at epoch seconds ``ts``.

    - enter: the first inside ping after being outside (or with no state);
    - dwell: once per visit, at the first ping at least ``dwell_s`` after the enter, by
      ping timestamps;
    - exit: only once the device is beyond the fence by more than the exit margin
      (``exit_margin_m``, else the fence's default max(10 m, 20 % of radius)), so GPS
      jitter at an edge does not make enter/exit/enter. A fence deleted meanwhile is
      dropped without an exit event (the store is gone, not left).

    State whose last ping is more than ``state_ttl_s`` older than this one is forgotten.
    Events are ordered exits, enters, dwells, each by store_id. ``matches``: what
    ``index.match(lat, lng)`` returns, when the caller has it already.
    """
    if state is not None and ts - state.last_ts > state_ttl_s:
        state = None
    if matches is None:
        matches = index.match(lat, lng)
    inside_now = {m.fence.store_id: m for m in matches}
    visits = dict(state.inside) if state is not None else {}
    exits: list[VisitEvent] = []
    enters: list[VisitEvent] = []
    dwells: list[VisitEvent] = []
    for store_id in sorted(visits):
        if store_id in inside_now:
            continue
        fence = index.get(store_id)
        if fence is None:
            del visits[store_id]
            continue
        margin = fence.exit_margin_m if exit_margin_m is None else exit_margin_m
        if not fence.still_inside(lat, lng, margin):
            del visits[store_id]
            exits.append(VisitEvent("exit", store_id))
    for store_id in sorted(inside_now):
        match = inside_now[store_id]
        visit = visits.get(store_id)
        if visit is None:
            visits[store_id] = visit = Visit(entered_at=ts)
            enters.append(VisitEvent("enter", store_id, distance_m=match.distance_m))
    for store_id in sorted(visits):
        visit = visits[store_id]
        if not visit.dwell_sent and ts - visit.entered_at >= dwell_s:
            visit.dwell_sent = True
            match = inside_now.get(store_id)
            dwells.append(
                VisitEvent(
                    "dwell",
                    store_id,
                    distance_m=match.distance_m if match is not None else None,
                    dwell_s=ts - visit.entered_at,
                )
            )
    return DeviceState(last_ts=ts, inside=visits), [*exits, *enters, *dwells]
