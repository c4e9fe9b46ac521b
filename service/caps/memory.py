"""In-process frequency caps and budgets for the embedded default (one worker process only)."""

from __future__ import annotations

from dataclasses import dataclass, field

from service.caps.base import (
    BUDGET_DAY_TTL_S,
    BUDGET_PER_DAY,
    BUDGET_TOTAL,
    CHANNELS,
    OK,
    CapRequest,
    CapResult,
    capped,
)


@dataclass(slots=True)
class _History:
    """One user scope: issue_id -> time (ms), like the sorted set of the Redis store."""

    at: dict[str, int] = field(default_factory=dict)
    expires_ms: int = 0

    def trim(self, before_ms: int) -> None:
        if any(t <= before_ms for t in self.at.values()):
            self.at = {i: t for i, t in self.at.items() if t > before_ms}

    def count_since(self, after_ms: int) -> int:
        return sum(1 for t in self.at.values() if t > after_ms)


class MemoryCapStore:
    """Dicts that mirror the Redis store's keys.

    ``acquire`` and ``release`` have no ``await`` inside, so on one event loop each call is
    atomic. History older than the longest window in use is trimmed whenever a scope is
    touched, and scopes, day counters and issue markers that expired (by the request clock)
    are swept every ``sweep_every`` calls, so memory stays bounded.
    """

    def __init__(self, sweep_every: int = 10_000) -> None:
        self._hist: dict[tuple[str, ...], _History] = {}
        self._total: dict[str, int] = {}
        self._day: dict[tuple[str, str], tuple[int, int]] = {}  # -> (count, expires_ms)
        self._marks: dict[tuple[str, str], tuple[bool, int]] = {}  # -> (day counted, expires_ms)
        self._sweep_every = sweep_every
        self._calls = 0

    @staticmethod
    def _scopes(req: CapRequest) -> tuple[tuple[str, ...], ...]:
        # In check order: campaign, global (also the min-gap history), channel.
        return (
            ("c", req.user_key, req.campaign_id),
            ("all", req.user_key),
            ("ch", req.user_key, req.channel),
        )

    async def acquire(self, req: CapRequest) -> CapResult:
        now = req.now_ms
        self._tick(now)
        keep = req.retention_ms
        scopes = self._scopes(req)
        # Without any user cap nothing is recorded: there is nothing to enforce and no
        # window to say how long to keep it (the Redis store does the same).
        user_step = keep > 0 and req.issue_id not in self._get(scopes[1]).at
        if user_step:
            hists = [self._get(s) for s in scopes]
            for h in hists:
                h.trim(now - keep)
            for scope, caps in enumerate((req.campaign_caps, req.global_caps, req.channel_caps)):
                for i, cap in enumerate(caps):
                    if hists[scope].count_since(now - cap.window_s * 1000) >= cap.count:
                        return capped(req, scope, i)
            if req.min_gap_ms and hists[1].count_since(now - req.min_gap_ms) > 0:
                return capped(req, 3, 0)
        if req.has_budget and (req.campaign_id, req.issue_id) not in self._marks:
            refusal = self._budget_refusal(req)
            if refusal is not None:
                # Mirrors the Redis store's roll-back, which matters only for a retry whose
                # first attempt was counted without a budget.
                self._forget(req)
                return refusal
            self._count_budget(req, now)
        if user_step:
            for s in scopes:
                h = self._hist.setdefault(s, _History())
                h.at[req.issue_id] = now
                h.expires_ms = max(h.expires_ms, now + keep)
        return OK

    def _budget_refusal(self, req: CapRequest) -> CapResult | None:
        if req.budget_total is not None and self._total.get(req.campaign_id, 0) >= req.budget_total:
            return BUDGET_TOTAL
        if req.budget_per_day is not None:
            held = self._day.get((req.campaign_id, req.budget_day))
            if held is not None and held[0] >= req.budget_per_day:
                return BUDGET_PER_DAY
        return None

    def _count_budget(self, req: CapRequest, now: int) -> None:
        ttl = BUDGET_DAY_TTL_S * 1000
        self._total[req.campaign_id] = self._total.get(req.campaign_id, 0) + 1
        count_day = bool(req.budget_day)
        if count_day:
            key = (req.campaign_id, req.budget_day)
            self._day[key] = (self._day.get(key, (0, 0))[0] + 1, now + ttl)
        self._marks[(req.campaign_id, req.issue_id)] = (count_day, now + ttl)

    async def release(self, req: CapRequest) -> None:
        self._tick(req.now_ms)
        self._forget(req)
        mark = self._marks.pop((req.campaign_id, req.issue_id), None)
        if mark is None:
            return
        if self._total.get(req.campaign_id, 0) > 0:
            self._total[req.campaign_id] -= 1
        key = (req.campaign_id, req.budget_day)
        held = self._day.get(key)
        if mark[0] and held is not None and held[0] > 0:
            self._day[key] = (held[0] - 1, held[1])

    async def usage(
        self,
        user_key: str,
        campaign_id: str,
        now: float,
        *,
        window_s: int = 86_400,
        budget_day: str = "",
    ) -> dict[str, int]:
        since = round(now * 1000) - window_s * 1000
        scopes = {
            "campaign": ("c", user_key, campaign_id),
            "global": ("all", user_key),
            **{f"channel:{ch}": ("ch", user_key, ch) for ch in CHANNELS},
        }
        out = {name: self._get(s).count_since(since) for name, s in scopes.items()}
        out["budget:total"] = self._total.get(campaign_id, 0)
        if budget_day:
            out["budget:per_day"] = self._day.get((campaign_id, budget_day), (0, 0))[0]
        return out

    def _forget(self, req: CapRequest) -> None:
        for s in self._scopes(req):
            h = self._hist.get(s)
            if h is not None:
                h.at.pop(req.issue_id, None)

    async def forget_user(self, user_key: str) -> None:
        """Erase a user's cap history."""
        self._hist = {k: h for k, h in self._hist.items() if k[1] != user_key}

    def _get(self, scope: tuple[str, ...]) -> _History:
        return self._hist.get(scope) or _History()

    def _tick(self, now: int) -> None:
        self._calls += 1
        if self._calls % self._sweep_every == 0:
            self._hist = {k: h for k, h in self._hist.items() if h.expires_ms > now and h.at}
            self._day = {k: v for k, v in self._day.items() if v[1] > now}
            self._marks = {k: v for k, v in self._marks.items() if v[1] > now}

    async def ready(self) -> bool:
        return True

    async def close(self) -> None:
        return None
