"""Bodies of the user endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, BeforeValidator, Field, RootModel, field_validator

from service.limits import JsonObject, Properties, identifier

#: Attributes with a meaning to the service, and the type each must have.
KNOWN_TYPES: dict[str, tuple[type, ...]] = {
    "location_consent": (bool,),
    "first_name": (str,),
    "last_name": (str,),
    "loyalty_tier": (str,),
    "signup_at": (str,),
}
MAX_ATTRIBUTES = 100
#: Path parameter: a user id, as in ``users.user_id``.
UserId = Annotated[str, identifier(128)]
Attributes = Annotated[
    dict[str, Any], JsonObject(2, objects=False, min_keys=1, max_keys=MAX_ATTRIBUTES)
]


class AttributesPatch(RootModel[Attributes]):
    """Attributes to set; ``null`` removes one. Values are JSON scalars or lists of scalars."""

    @field_validator("root")
    @classmethod
    def _check(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key, v in value.items():
            if v is None:
                continue
            want = KNOWN_TYPES.get(key)
            if want and not isinstance(v, want):
                raise ValueError(f"{key} must be {want[0].__name__}")
            if key == "signup_at":
                try:
                    parsed = datetime.fromisoformat(v)
                except ValueError:
                    raise ValueError("signup_at must be an RFC 3339 timestamp") from None
                if parsed.tzinfo is None:
                    raise ValueError("signup_at needs a UTC offset (e.g. Z)")
        return value


def _text_only(value: object) -> object:
    # Lax pydantic reads a number as epoch seconds; the schema says RFC 3339 text.
    if not isinstance(value, str | datetime):
        raise ValueError("must be an RFC 3339 timestamp with an offset, e.g. 2026-05-01T12:00:00Z")
    return value


class UserEventIn(BaseModel):
    type: str = Field(pattern=r"^[a-z][a-z0-9_.-]{0,63}$", examples=["purchase"])
    occurred_at: Annotated[AwareDatetime, BeforeValidator(_text_only)]
    store_id: Annotated[str, identifier(128)] | None = None
    properties: Properties = Field(default_factory=dict)
    event_id: Annotated[str, identifier(32)] | None = Field(
        default=None,
        description="Your id for this event: a retry with the same id is recorded once.",
    )


class UserEventOut(BaseModel):
    event_id: str
    user_id: str
    type: str
    occurred_at: datetime
    store_id: str | None
    properties: dict[str, Any]
    duplicate: bool


class ErasureOut(BaseModel):
    """An erasure's progress: ``pending`` while its Redis steps wait for Redis."""

    user_id: str
    status: Literal["pending", "done"]
    requested_at: datetime
    completed_at: datetime | None
    attempts: int
    last_error: str | None
