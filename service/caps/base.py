"""The frequency-cap and budget interface of eligibility steps 7-8 (DESIGN.md section 4).

``acquire`` checks every cap and the budget and, only when all of them allow it, counts the
issuance in every scope at once — atomically, so that 100 concurrent pings of one user under
a cap of 1 issue exactly one offer. ``release`` undoes an acquire whose issuance could not be
written.

Windows slide: an issuance at time ``t`` counts against a window ``W`` while ``now - t < W``.
Times are compared in whole milliseconds by every store, so both give the same answer at the
edge of a window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

#: the channels ``usage`` reports on; ``CapRequest.channel`` is not restricted to them
CHANNELS = ("push", "in_app")

#: how long a per-day budget counter and an issue's budget marker are kept: the day itself
#: (in any time zone) plus the margin inside which ``release`` is expected to be called
BUDGET_DAY_TTL_S = 2 * 86_400


@dataclass(frozen=True, slots=True)
class Cap:
    """At most ``count`` offers per sliding window of ``window_s`` seconds."""

    count: int
    window_s: int

    def __post_init__(self) -> None:
        if self.count < 0 or self.window_s <= 0:
            raise ValueError(f"cap needs count >= 0 and window_s > 0, got {self!r}")

    def label(self, scope: str) -> str:
        """``scope:count/windows``, e.g. ``campaign:1/86400s``: the ``cap`` of a refusal."""
        return f"{scope}:{self.count}/{self.window_s}s"


@dataclass(frozen=True, slots=True)
class CapRequest:
    """One attempted issuance and every limit that applies to it."""

    user_key: str  # user_id, else device_id
    campaign_id: str
    channel: str  # "push" | "in_app"
    issue_id: str  # unique token of this attempted issuance (uuid4 hex)
    now: float  # epoch seconds, the server clock (passed in so tests can move time)
    campaign_caps: tuple[Cap, ...] = ()  # this campaign, this user
    global_caps: tuple[Cap, ...] = ()  # all campaigns, this user (policies.caps)
    channel_caps: tuple[Cap, ...] = ()  # this channel, this user (policies.channel_caps)
    min_gap_s: int | None = None  # between any two offers to this user
    budget_total: int | None = None  # campaign-wide issue limits
    budget_per_day: int | None = None
    budget_day: str = ""  # the day the per-day budget counts in, e.g. "2026-11-23"

    def __post_init__(self) -> None:
        if not self.issue_id:
            raise ValueError("issue_id must not be empty")
        if self.min_gap_s is not None and self.min_gap_s < 0:
            raise ValueError("min_gap_s must be >= 0")
        for name in ("budget_total", "budget_per_day"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0")
        # Without a day the per-day counter would silently never reset.
        if self.budget_per_day is not None and not self.budget_day:
            raise ValueError("budget_per_day needs budget_day")

    @property
    def now_ms(self) -> int:
        return round(self.now * 1000)

    @property
    def min_gap_ms(self) -> int:
        return (self.min_gap_s or 0) * 1000

    @property
    def retention_ms(self) -> int:
        """How long user history must be kept for these caps: the longest window or gap."""
        windows = [c.window_s for c in (*self.campaign_caps, *self.global_caps, *self.channel_caps)]
        return max([*windows, self.min_gap_s or 0]) * 1000

    @property
    def has_budget(self) -> bool:
        return self.budget_total is not None or self.budget_per_day is not None


@dataclass(frozen=True, slots=True)
class CapResult:
    ok: bool
    reason: str | None = None  # "capped" | "budget_exhausted"
    #: which limit refused: "campaign:1/86400s", "global:2/86400s", "channel:push:1/86400s",
    #: "min_gap:1800s", "budget:total", "budget:per_day"
    cap: str | None = None


OK = CapResult(ok=True)
BUDGET_TOTAL = CapResult(ok=False, reason="budget_exhausted", cap="budget:total")
BUDGET_PER_DAY = CapResult(ok=False, reason="budget_exhausted", cap="budget:per_day")


def capped(req: CapRequest, scope: int, index: int) -> CapResult:
    """The refusal for cap ``index`` of ``scope`` (0 campaign, 1 global, 2 channel, 3 min gap)."""
    if scope == 3:
        return CapResult(ok=False, reason="capped", cap=f"min_gap:{req.min_gap_s}s")
    caps, name = (
        (req.campaign_caps, "campaign"),
        (req.global_caps, "global"),
        (req.channel_caps, f"channel:{req.channel}"),
    )[scope]
    return CapResult(ok=False, reason="capped", cap=caps[index].label(name))


class CapUnavailable(Exception):
    """The cap backend cannot be reached: callers fail closed (no offer)."""


class CapStore(Protocol):
    async def acquire(self, req: CapRequest) -> CapResult:
        """Check every cap and the budget; count the issuance in every scope or in none.

        Acquiring again with the same ``issue_id`` (a retry after a lost reply) does not
        count twice.
        """
        ...

    async def release(self, req: CapRequest) -> None:
        """Undo ``acquire(req)`` (pass the same request); a no-op when it was not counted."""
        ...

    async def usage(
        self,
        user_key: str,
        campaign_id: str,
        now: float,
        *,
        window_s: int = 86_400,
        budget_day: str = "",
    ) -> dict[str, int]:
        """Counts for explain and tests: issuances in the window ending at ``now`` under
        ``campaign``, ``global`` and ``channel:<c>``; the campaign's ``budget:total``; and
        ``budget:per_day`` when ``budget_day`` is given."""
        ...

    async def forget_user(self, user_key: str) -> None:
        """Erase a user's cap history (DELETE /v1/users/{id})."""
        ...

    async def ready(self) -> bool: ...

    async def close(self) -> None: ...
