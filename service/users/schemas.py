"""Bodies of the user endpoints."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, Field, RootModel, field_validator

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]{0,63}$")
#: Attributes with a meaning to the service, and the type each must have.
KNOWN_TYPES: dict[str, tuple[type, ...]] = {
    "location_consent": (bool,),
    "first_name": (str,),
    "last_name": (str,),
    "loyalty_tier": (str,),
    "signup_at": (str,),
}


class AttributesPatch(RootModel[dict[str, Any]]):
    """Attributes to set; ``null`` removes one. Values are JSON scalars or lists of scalars."""

    @field_validator("root")
    @classmethod
    def _check(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not value:
            raise ValueError("send at least one attribute")
        if len(value) > 100:
            raise ValueError("at most 100 attributes per request")
        for key, v in value.items():
            if not _KEY.match(key):
                raise ValueError(f"attribute name {key!r} must match {_KEY.pattern}")
            if v is None:
                continue
            if isinstance(v, dict):
                raise ValueError(f"{key}: nested objects are not supported")
            if isinstance(v, list) and any(isinstance(x, dict | list) for x in v):
                raise ValueError(f"{key}: lists may hold only scalars")
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


class UserEventIn(BaseModel):
    type: str = Field(pattern=r"^[a-z][a-z0-9_.-]{0,63}$", examples=["purchase"])
    occurred_at: AwareDatetime
    store_id: str | None = Field(default=None, max_length=128)
    properties: dict[str, Any] = Field(default_factory=dict)
    event_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=32,
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
