"""Request and response bodies of the ping endpoints."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, WithJsonSchema

from service.reasons import ANSWER_REASONS, Reason
from service.trust.checks import TrustCheck


class PingIn(BaseModel):
    """One location ping. ``timestamp`` is RFC 3339 with an offset (``Z`` or ``+02:00``)."""

    # Strict: the documented types only (lax mode read false as 0.0, and 0 as 1970).
    model_config = ConfigDict(strict=True)

    device_id: str = Field(min_length=1, max_length=128)
    user_id: str | None = Field(default=None, min_length=1, max_length=128)
    lat: float = Field(ge=-90, le=90, allow_inf_nan=False)
    lng: float = Field(ge=-180, le=180, allow_inf_nan=False)
    accuracy_m: float = Field(ge=0, allow_inf_nan=False)
    timestamp: AwareDatetime
    ping_id: str | None = Field(default=None, min_length=1, max_length=128)
    speed_mps: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    channel: Literal["push", "in_app"] | None = None
    mocked: bool = Field(
        default=False,
        description="The OS says the location is simulated (Android `Location.isMock()`, "
        "iOS `sourceInformation.isSimulatedBySoftware`): no offer (`suspected_spoofing`).",
    )


class PingBatchIn(BaseModel):
    model_config = ConfigDict(strict=True)

    pings: list[PingIn] = Field(min_length=1, max_length=100)


class EventOut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["enter", "dwell", "exit"]
    store_id: str
    distance_m: float | None = None
    dwell_s: float | None = None


class StoreRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    store_id: str
    name: str


class Offer(BaseModel):
    """An issued offer: its coupon code redeems once (``POST /v1/redemptions``)."""

    model_config = ConfigDict(extra="forbid")

    offer_id: str
    campaign_id: str
    coupon_code: str
    title: str
    message: str
    value: float
    channel: Literal["push", "in_app"]
    expires_at: AwareDatetime
    store: StoreRef
    distance_m: float


class CampaignDecision(BaseModel):
    """One campaign's reason on this ping (``explain=true``); ``cap`` names the cap that
    refused, for ``capped`` and ``budget_exhausted``; ``check`` the trust check that
    failed, for ``suspected_spoofing``."""

    model_config = ConfigDict(extra="forbid")

    campaign_id: str
    reason: Reason
    cap: str | None = None
    check: TrustCheck | None = None


# A Reason a 200 answer can carry (future_ping is a 422): the schema lists exactly those.
AnswerReason = Annotated[
    Reason,
    WithJsonSchema(
        {"type": "string", "enum": [r.value for r in ANSWER_REASONS], "title": "AnswerReason"}
    ),
]


class PingOut(BaseModel):
    """The answer to one ping: its visit events, at most one offer, and why."""

    model_config = ConfigDict(extra="forbid")

    ping_id: str
    events: list[EventOut]
    offer: Offer | None
    reason: AnswerReason = Field(
        description="Why this answer (`offer_issued` with an offer); see the Reason codes."
    )
    decisions: list[CampaignDecision] | None = Field(
        default=None, description="Every campaign's reason; only with `explain=true`."
    )


class PingBatchOut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    results: list[PingOut]
