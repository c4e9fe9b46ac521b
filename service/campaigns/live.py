"""A replica's campaigns compiled once per campaign-set version, and step 4 in-process.

Everything a ping's decision needs that does not depend on the user is built here when a
campaign set is loaded: which campaigns run at a store (maps by store id and by tag), the
trigger thresholds, the caps as the cap store takes them, the compiled offer template.
:meth:`CampaignSet.screen` runs DESIGN §4 step 4 (targeting, status, dates, schedule, quiet
hours, trigger) for a ping's visits without any I/O, so a campaign that cannot fire costs
a ping nothing beyond this.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from liquid import BoundTemplate

from service.campaigns import rules
from service.campaigns.spec import Campaign, CapSpec, Policies
from service.caps.base import Cap
from service.reasons import Reason


class _Fence(Protocol):
    store_id: str
    tags: Any
    timezone: str


class _Index(Protocol):
    def get(self, store_id: str) -> Any: ...


@dataclass(frozen=True, slots=True)
class VisitTrigger:
    """A fence the device is inside after this ping."""

    store_id: str
    entered: bool  # this ping is the enter
    dwell_s: float  # time inside at this ping, by ping timestamps
    prev_dwell_s: float | None  # time inside at the previous ping (None: entered now)
    distance_m: float


def _caps(specs: Iterable[CapSpec] | None) -> tuple[Cap, ...]:
    return tuple(Cap(count=c.count, window_s=int(c.window)) for c in specs or ())


@dataclass(frozen=True, slots=True, eq=False)
class LiveCampaign:
    """One campaign, compiled: what every ping needs of it, built once."""

    campaign: Campaign
    template: BoundTemplate
    caps: tuple[Cap, ...]
    dwell_need_s: float | None  # None for an enter campaign

    @property
    def id(self) -> str:
        return self.campaign.id

    def fires(self, t: VisitTrigger) -> bool:
        """Enter campaigns on the enter; dwell campaigns once per visit, at the first ping
        whose time inside reaches their ``dwell_s``."""
        need = self.dwell_need_s
        if need is None:
            return t.entered
        before = -1.0 if t.prev_dwell_s is None else t.prev_dwell_s
        return before < need <= t.dwell_s


@dataclass(frozen=True, slots=True)
class Screen:
    """Step 4's verdict for one ping: the campaigns left to decide, each with the visit it
    fires on (nearest first), and the reason of every other campaign."""

    candidates: list[tuple[LiveCampaign, VisitTrigger]]
    reasons: dict[str, Reason]


@dataclass(frozen=True)
class CampaignSet:
    version: int
    campaigns: tuple[Campaign, ...] = ()
    policies: Policies = field(default_factory=Policies)
    by_id: dict[str, Campaign] = field(default_factory=dict)
    live: tuple[LiveCampaign, ...] = ()
    global_caps: tuple[Cap, ...] = ()
    channel_caps: Mapping[str, tuple[Cap, ...]] = field(default_factory=dict)
    min_gap_s: int | None = None
    # Which campaigns run at a store: everywhere, by store id, by (casefolded) tag.
    _everywhere: tuple[LiveCampaign, ...] = ()
    _by_store: Mapping[str, tuple[LiveCampaign, ...]] = field(default_factory=dict)
    _by_tag: Mapping[str, tuple[LiveCampaign, ...]] = field(default_factory=dict)
    _has_enter: bool = False
    _dwell_needs: tuple[float, ...] = ()

    @classmethod
    def build(
        cls, version: int, campaigns: tuple[Campaign, ...], policies: Policies
    ) -> CampaignSet:
        live = tuple(
            LiveCampaign(
                campaign=c,
                template=rules.compile_message(c.offer.message),
                caps=_caps(c.caps),
                dwell_need_s=None if c.trigger.type == "enter" else float(c.trigger.dwell_s or 0),
            )
            for c in campaigns
        )
        by_store: dict[str, list[LiveCampaign]] = {}
        by_tag: dict[str, list[LiveCampaign]] = {}
        for lc in live:
            t = lc.campaign.targeting
            for store_id in dict.fromkeys(t.store_ids):
                by_store.setdefault(store_id, []).append(lc)
            for tag in dict.fromkeys(x.casefold() for x in t.tags):
                by_tag.setdefault(tag, []).append(lc)
        return cls(
            version=version,
            campaigns=campaigns,
            policies=policies,
            by_id={c.id: c for c in campaigns},
            live=live,
            global_caps=_caps(policies.caps),
            channel_caps={ch: _caps(specs) for ch, specs in policies.channel_caps.items()},
            min_gap_s=int(policies.min_gap) if policies.min_gap else None,
            _everywhere=tuple(
                lc
                for lc in live
                if not lc.campaign.targeting.store_ids and not lc.campaign.targeting.tags
            ),
            _by_store={k: tuple(v) for k, v in by_store.items()},
            _by_tag={k: tuple(v) for k, v in by_tag.items()},
            _has_enter=any(lc.dwell_need_s is None for lc in live),
            _dwell_needs=tuple(sorted({lc.dwell_need_s for lc in live if lc.dwell_need_s})),
        )

    def any_fires(self, triggers: list[VisitTrigger]) -> bool:
        """Whether any campaign's trigger fires on any of these visits (DESIGN §4 step 3)."""
        for t in triggers:
            if t.entered and self._has_enter:
                return True
            before = -1.0 if t.prev_dwell_s is None else t.prev_dwell_s
            if any(before < need <= t.dwell_s for need in self._dwell_needs):
                return True
        return False

    def at_store(self, store_id: str, tags: Iterable[str]) -> set[LiveCampaign]:
        """The campaigns that run at this store (no targeting, its id, or one of its tags)."""
        out = set(self._everywhere)
        out.update(self._by_store.get(store_id, ()))
        for tag in tags:
            out.update(self._by_tag.get(tag.casefold(), ()))
        return out

    def screen(
        self,
        index: _Index,
        triggers: list[VisitTrigger],
        channel: str | None,
        now: datetime,
    ) -> Screen:
        """Step 4 for every campaign, in-process: the candidates and the other reasons."""
        by_distance = sorted(triggers, key=lambda t: (t.distance_m, t.store_id))
        fences = [(t, index.get(t.store_id)) for t in by_distance]
        here = [(t, f, self.at_store(f.store_id, f.tags)) for t, f in fences if f is not None]
        candidates: list[tuple[LiveCampaign, VisitTrigger]] = []
        reasons: dict[str, Reason] = {}
        for lc in self.live:
            c = lc.campaign
            if channel is not None and c.channel != channel:
                reasons[c.id] = Reason.CHANNEL_MISMATCH
                continue
            seen: list[Reason] = []
            for t, fence, running in here:
                # Targeting first: "outside_schedule" would be a misleading answer for a
                # store the campaign does not run at.
                if lc not in running:
                    seen.append(Reason.NOT_TARGETED)
                    continue
                r = rules.schedule_reason(c, self.policies, now, fence.timezone)
                if r is None and not lc.fires(t):
                    r = Reason.TRIGGER_MISMATCH
                if r is None:
                    candidates.append((lc, t))
                    break
                seen.append(r)
            else:
                reasons[c.id] = rules.furthest_of(seen)
        return Screen(candidates, reasons)
