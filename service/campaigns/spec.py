"""The campaigns file marketers upload (DESIGN §6): pydantic models, validated as a whole.

:func:`parse_campaign_file` reads YAML or JSON and either returns a :class:`CampaignFile`
or raises :class:`SpecError` listing *every* problem at once, each as
``{"campaign", "field", "reason", "line"}``. Every model forbids unknown fields, so a
typo such as ``budgett`` is an error instead of a silently ignored setting.

Value forms:

- duration: ``"<int><unit>"`` with unit ``s m h d w`` (``"30m"``, ``"24h"``, ``"7d"``) or a
  bare positive int of seconds; stored as int seconds (so documents round-trip as ints).
- window: ``"HH:MM-HH:MM"`` in the store's local time; an end of ``00:00`` or ``24:00``
  means midnight (``"21:00-00:00"`` is ``"21:00-24:00"``); an end before the start is an
  overnight window (``"21:00-08:00"``) that belongs to the day it starts on.
- text: no control characters (C0 but tab, line feed and carriage return; DEL; C1), raw
  or escaped, anywhere in the file: PostgreSQL and the YAML reader refuse some of them,
  and none belongs in a campaign.
- day: ``mon`` … ``sun`` in any case.

Field paths in errors read like ``offer.coupon.type`` and ``caps[1].window`` (list
indexes 0-based, as in JSONPath); ``campaign`` is the campaign id, or ``"#<n>"`` (1-based
position in the file) when the id is missing or invalid, or ``None`` for the policies
and the file as a whole. ``line`` is given for YAML input (``None`` for JSON).
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Annotated, Any, Literal, get_args

import yaml
from liquid import Environment
from liquid.exceptions import LiquidError
from liquid.token import Token
from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

__all__ = [
    "DAYS",
    "DURATION_FORM",
    "MAX_DURATION_S",
    "MESSAGE_ENV",
    "WINDOW_FORM",
    "Audience",
    "Budget",
    "Campaign",
    "CampaignFile",
    "CapSpec",
    "Channel",
    "Condition",
    "Coupon",
    "Day",
    "ExceptionRule",
    "Offer",
    "Op",
    "Policies",
    "Schedule",
    "SpecError",
    "Targeting",
    "Trigger",
    "Window",
    "campaign_from_doc",
    "campaign_to_doc",
    "parse_campaign_file",
    "parse_duration",
]

Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
#: In ``datetime.weekday()`` order, so ``DAYS[dt.weekday()]`` is that date's day name.
DAYS: tuple[Day, ...] = get_args(Day)
Channel = Literal["push", "in_app"]
Op = Literal["eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte", "exists", "not_exists"]

DURATION_FORM = (
    '"<whole number><unit>" with unit s, m, h, d or w (e.g. "30m", "24h", "7d"), '
    "or a whole number of seconds"
)
WINDOW_FORM = (
    '"HH:MM-HH:MM" (e.g. "07:00-11:00", overnight "21:00-08:00"; an end of 00:00 or 24:00 '
    "is midnight)"
)
#: Longer than any sensible cap window, lookback or coupon life; also keeps timedelta sane.
MAX_DURATION_S = 366 * 86_400

_UNIT_S = {"s": 1, "m": 60, "h": 3_600, "d": 86_400, "w": 604_800}
_DURATION_RE = re.compile(r"([0-9]+)([smhdw])")
_WINDOW_RE = re.compile(r"([0-9]{1,2}):([0-9]{2})\s*-\s*([0-9]{1,2}):([0-9]{2})")
_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_ID_RE = re.compile(_ID_PATTERN)
_SCALAR = (str, int, float, bool)
MAX_CONDITION_ITEMS = 1_000
MAX_CONDITION_TEXT = 1_000
# Raw in the text: C0 but tab, LF and CR; DEL; C1 (PyYAML's reader refuses most of these).
_RAW_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# In a parsed value (JSON or YAML escapes): the same, and lone surrogates (not UTF-8).
_VALUE_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
# A YAML file of a few kilobytes can expand to billions of nodes through nested aliases.
_MAX_NODES = 200_000


class _MessageEnvironment(Environment):
    """Liquid for offer messages: lenient undefined (renders empty), bounded work."""

    # Marketers write these templates; a runaway loop must not stall a ping.
    loop_iteration_limit = 1_000
    output_stream_limit = 10_000


#: Shared by validation here and rendering in :mod:`service.campaigns.rules`.
MESSAGE_ENV = _MessageEnvironment()


# --- value parsers -------------------------------------------------------------------


def parse_duration(value: object) -> int:
    """``"30m"`` → 1800; a bare positive int is seconds. Raises ``ValueError`` otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}: expected {DURATION_FORM}")
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, str) and (m := _DURATION_RE.fullmatch(value.strip())):
        seconds = int(m[1]) * _UNIT_S[m[2]]
    else:
        raise ValueError(f"invalid duration {value!r}: expected {DURATION_FORM}")
    if seconds < 1:
        raise ValueError(f"invalid duration {value!r}: must be positive; expected {DURATION_FORM}")
    if seconds > MAX_DURATION_S:
        raise ValueError(f"invalid duration {value!r}: longer than the maximum of 366d")
    return seconds


def _no_bool(value: object) -> object:
    # Pydantic's lax mode reads true as 1; in a marketer's file that is a mistake.
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    return value


def _int_to_str(value: object) -> object:
    # Store ids, tags and codes are often all digits; YAML hands those over as ints.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _parse_day(value: object) -> object:
    if isinstance(value, str) and value.strip().lower() in DAYS:
        return value.strip().lower()
    raise ValueError(f"unknown day {value!r}: expected one of {', '.join(DAYS)}")


Duration = Annotated[int, BeforeValidator(parse_duration)]
Int = Annotated[int, BeforeValidator(_no_bool)]
Num = Annotated[float, BeforeValidator(_no_bool)]
DayName = Annotated[Day, BeforeValidator(_parse_day)]
Label = Annotated[
    str,
    BeforeValidator(_int_to_str),
    StringConstraints(strip_whitespace=True, min_length=1, max_length=128),
]
CampaignId = Annotated[str, BeforeValidator(_int_to_str), StringConstraints(pattern=_ID_PATTERN)]
CouponText = Annotated[
    str, BeforeValidator(_int_to_str), StringConstraints(pattern=r"^[A-Za-z0-9_-]{0,32}$")
]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# --- models --------------------------------------------------------------------------


class Window(_Spec):
    """A daily window in minutes since local midnight; ``end < start`` runs overnight.

    Given and serialised as ``"HH:MM-HH:MM"``.

    >>> Window.model_validate("21:00-08:00").covers(23 * 60)
    True
    """

    start: int
    end: int

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, value: object) -> object:
        if isinstance(value, str):
            return _parse_window(value)
        if isinstance(value, Window | Mapping):
            return value
        raise ValueError(f"invalid window {value!r}: expected {WINDOW_FORM}")

    @model_validator(mode="after")
    def _check(self) -> Window:
        if not (0 <= self.start < 1440 and 0 < self.end <= 1440) or self.start == self.end:
            raise ValueError(f"invalid window {self}: expected {WINDOW_FORM}")
        return self

    @model_serializer
    def _to_text(self) -> str:
        return str(self)

    def __str__(self) -> str:
        return f"{_hhmm(self.start)}-{_hhmm(self.end)}"

    @property
    def overnight(self) -> bool:
        """True when the window crosses midnight into the next day."""
        return self.end < self.start

    def covers(self, minute: float) -> bool:
        """Whether ``minute`` (since local midnight, fractional) is inside, any day."""
        if self.overnight:
            return minute >= self.start or minute < self.end
        return self.start <= minute < self.end


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _parse_window(text: str) -> dict[str, int]:
    m = _WINDOW_RE.fullmatch(text.strip())
    if not m:
        raise ValueError(f"invalid window {text!r}: expected {WINDOW_FORM}")
    sh, sm, eh, em = (int(g) for g in m.groups())
    if (eh, em) == (0, 0):
        eh = 24  # DESIGN §4: an end of 00:00 means midnight, as 24:00 does
    if sh > 23 or sm > 59:
        raise ValueError(
            f"invalid window {text!r}: start {m[1]}:{m[2]} is not a time of day "
            f"(00:00 to 23:59); expected {WINDOW_FORM}"
        )
    if eh > 24 or em > 59 or (eh == 24 and em):
        raise ValueError(
            f"invalid window {text!r}: end {m[3]}:{m[4]} is not a time of day "
            f"(00:00 to 24:00); expected {WINDOW_FORM}"
        )
    start, end = sh * 60 + sm, eh * 60 + em
    if start == end:
        raise ValueError(
            f"invalid window {text!r}: start equals end; use 00:00-24:00 for the whole day"
        )
    return {"start": start, "end": end}


class CapSpec(_Spec):
    """At most ``count`` offers per sliding ``window`` (seconds)."""

    count: Int = Field(ge=1)
    window: Duration


class Policies(_Spec):
    """Per-user limits across all campaigns."""

    caps: list[CapSpec] = Field(default=[], max_length=20)
    channel_caps: dict[Channel, list[CapSpec]] = {}
    min_gap: Duration | None = None
    quiet_hours: Window | None = None


class Trigger(_Spec):
    """``enter``, or ``dwell`` once the visit has lasted ``dwell_s`` seconds."""

    type: Literal["enter", "dwell"]
    dwell_s: Duration | None = Field(default=None, validate_default=True)

    @field_validator("dwell_s")
    @classmethod
    def _dwell_only_for_dwell(cls, value: int | None, info: ValidationInfo) -> int | None:
        kind = info.data.get("type")
        if kind == "dwell" and value is None:
            raise ValueError("dwell_s is required for a dwell trigger (seconds, e.g. 300)")
        if kind == "enter" and value is not None:
            raise ValueError("dwell_s is only allowed for a dwell trigger")
        return value


class Targeting(_Spec):
    """Stores by id or tag, any match; both empty means every store."""

    store_ids: list[Label] = Field(default=[], max_length=10_000)
    tags: list[Label] = Field(default=[], max_length=1_000)


class Schedule(_Spec):
    """Days and daily hours in the store's local time; no hours means all day."""

    days: list[DayName] = Field(default_factory=lambda: list(DAYS), min_length=1)
    hours: list[Window] = Field(default=[], max_length=48)

    @field_validator("days")
    @classmethod
    def _dedupe(cls, value: list[Day]) -> list[Day]:
        return list(dict.fromkeys(value))


class Condition(_Spec):
    """``field op value`` on a user attribute or derived fact; data, never code."""

    field: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    op: Op
    value: Any = Field(default=None, validate_default=True)

    @field_validator("value")
    @classmethod
    def _value_fits_op(cls, value: Any, info: ValidationInfo) -> Any:
        op = info.data.get("op")
        if op is None:
            return value  # the op itself is already reported
        texts = value if isinstance(value, list) else [value]
        if any(isinstance(v, str) and len(v) > MAX_CONDITION_TEXT for v in texts):
            raise ValueError(f"condition values are at most {MAX_CONDITION_TEXT} characters")
        if op in ("exists", "not_exists"):
            if value is not None:
                raise ValueError(f"op {op!r} takes no value")
        elif op in ("in", "not_in"):
            if not isinstance(value, list) or not value:
                raise ValueError(f"op {op!r} needs a non-empty list value, got {value!r}")
            if len(value) > MAX_CONDITION_ITEMS:
                raise ValueError(f"op {op!r} takes at most {MAX_CONDITION_ITEMS} values")
            bad = [v for v in value if not isinstance(v, _SCALAR)]
            if bad:
                raise ValueError(f"op {op!r} list items must be strings, numbers or booleans")
        elif op in ("gt", "gte", "lt", "lte"):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"op {op!r} needs a number value, got {value!r}")
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError(f"op {op!r} needs a finite number, got {value!r}")
        elif not isinstance(value, _SCALAR):
            raise ValueError(
                f"op {op!r} needs a string, number or boolean value, got {value!r}"
                + (" (use exists / not_exists to test presence)" if value is None else "")
            )
        return value


class Audience(_Spec):
    """All ``include`` conditions must hold and no ``exclude`` condition may hold."""

    include: list[Condition] = Field(default=[], max_length=50)
    exclude: list[Condition] = Field(default=[], max_length=50)


class ExceptionRule(_Spec):
    """An ``event`` by the user within the last ``within`` seconds cancels the campaign."""

    event: Label
    within: Duration


class Budget(_Spec):
    """Issue limits for the campaign; ``None`` is unlimited."""

    total: Int | None = Field(default=None, ge=1)
    per_day: Int | None = Field(default=None, ge=1)


class Coupon(_Spec):
    """``unique`` codes (random, optional prefix) or one ``fixed`` code for everyone."""

    type: Literal["unique", "fixed"] = "unique"
    prefix: CouponText = ""
    code: CouponText | None = Field(default=None, validate_default=True)

    @field_validator("prefix")
    @classmethod
    def _prefix_only_for_unique(cls, value: str, info: ValidationInfo) -> str:
        if value and info.data.get("type") == "fixed":
            raise ValueError("prefix is only for unique coupons; a fixed coupon has its code")
        return value

    @field_validator("code")
    @classmethod
    def _code_only_for_fixed(cls, value: str | None, info: ValidationInfo) -> str | None:
        kind = info.data.get("type")
        if kind == "fixed" and not value:
            raise ValueError("a fixed coupon needs a code (letters, digits, - and _)")
        if kind == "unique" and value is not None:
            raise ValueError("code is only for fixed coupons; unique codes are generated")
        return value


class Offer(_Spec):
    """What the user gets; ``message`` is a Liquid template checked at upload."""

    title: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    message: Annotated[str, StringConstraints(max_length=2_000)]
    value: Num = Field(default=0.0, ge=0)
    coupon: Coupon = Field(default_factory=Coupon)
    expires_in: Duration = 86_400

    @field_validator("message")
    @classmethod
    def _compiles(cls, value: str) -> str:
        check_template(value)
        return value


class Campaign(_Spec):
    """One campaign; every field but ``id``, ``trigger`` and ``offer`` has a default."""

    id: CampaignId
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    status: Literal["active", "paused"] = "active"
    starts_at: AwareDatetime | None = None
    ends_at: AwareDatetime | None = None
    channel: Channel = "push"
    priority: Int = 0
    trigger: Trigger
    targeting: Targeting = Field(default_factory=Targeting)
    schedule: Schedule = Field(default_factory=Schedule)
    audience: Audience = Field(default_factory=Audience)
    exceptions: list[ExceptionRule] = Field(default=[], max_length=50)
    caps: list[CapSpec] = Field(default=[], max_length=20)
    budget: Budget = Field(default_factory=Budget)
    rollout_pct: Num = Field(default=100.0, ge=0, le=100)
    holdout_pct: Num = Field(default=0.0, ge=0, le=100)
    #: ``false`` opts out of the trust checks (DESIGN §11): a suspected spoofed ping may
    #: still get this campaign's offer (e.g. a campaign that is not about being there).
    trust_checks: bool = True
    offer: Offer

    @model_validator(mode="before")
    @classmethod
    def _name_defaults_to_id(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data.get("name") is None:
            cid = _int_to_str(data.get("id"))
            # Without a usable id the campaign fails on ``id``; a placeholder name keeps
            # that from being reported twice.
            return {**data, "name": cid if isinstance(cid, str) and cid.strip() else "?"}
        return data

    @field_validator("ends_at")
    @classmethod
    def _ends_after_start(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        starts = info.data.get("starts_at")
        if value is not None and starts is not None and value <= starts:
            raise ValueError(
                f"ends_at {value.isoformat()} must be after starts_at {starts.isoformat()}"
            )
        return value


class CampaignFile(_Spec):
    """A whole upload: shared ``policies`` and the ``campaigns`` (ids unique)."""

    policies: Policies = Field(default_factory=Policies)
    campaigns: list[Campaign] = Field(max_length=10_000)

    @model_validator(mode="before")
    @classmethod
    def _bare_list(cls, data: Any) -> Any:
        return {"campaigns": data} if isinstance(data, list) else data

    @model_validator(mode="after")
    def _unique_ids(self) -> CampaignFile:
        first: dict[str, int] = {}
        for n, campaign in enumerate(self.campaigns, 1):
            if campaign.id in first:
                raise PydanticCustomError(
                    "duplicate_campaign_id",
                    "duplicate campaign id {id!r}: #{n} repeats #{first}",
                    {"id": campaign.id, "n": n, "first": first[campaign.id]},
                )
            first[campaign.id] = n
        return self


# --- Liquid --------------------------------------------------------------------------


def check_template(source: str) -> None:
    """Raise ``ValueError`` naming line and column if ``source`` is not a usable template."""
    try:
        template = MESSAGE_ENV.from_string(source)
    except LiquidError as exc:
        raise ValueError(f"Liquid syntax error{_where(source, exc.token)}: {exc.message}") from None
    # Unknown filters only fail at render time; catch them at upload instead.
    for name, spans in template.analyze().filters.items():
        if name not in MESSAGE_ENV.filters:
            line, col = _line_col(source, spans[0].index) if spans else (0, 0)
            where = f" at line {line}, column {col}" if line else ""
            raise ValueError(f"Liquid error{where}: unknown filter {name!r}")


def _where(source: str, token: Token | None) -> str:
    if token is None or token.start_index < 0 or token.source != source:
        return ""
    line, col = _line_col(source, token.start_index)
    return f" at line {line}, column {col}"


def _line_col(source: str, index: int) -> tuple[int, int]:
    """1-based line and column of a character index."""
    line = source.count("\n", 0, index) + 1
    return line, index - (source.rfind("\n", 0, index) + 1) + 1


# --- errors --------------------------------------------------------------------------


class SpecError(ValueError):
    """The campaigns file (or a stored campaign) is invalid; ``details`` lists every problem.

    Each detail is ``{"campaign": str | None, "field": str | None, "reason": str,
    "line": int | None}``.
    """

    def __init__(self, details: list[dict[str, Any]]) -> None:
        self.details = details
        first = details[0] if details else {"reason": "invalid campaigns file"}
        where = ", ".join(
            f"{key} {first[key]!r}" for key in ("campaign", "field") if first.get(key)
        )
        n = len(details)
        super().__init__(
            f"{n} error{'s' if n != 1 else ''} in the campaigns file "
            f"(first: {where + ': ' if where else ''}{first['reason']})"
        )


def _detail(
    campaign: str | None, field: str | None, reason: str, line: int | None = None
) -> dict[str, Any]:
    return {"campaign": campaign, "field": field, "reason": reason, "line": line}


# --- YAML / JSON ---------------------------------------------------------------------


class _Loader(yaml.SafeLoader):  # type: ignore[misc]
    """Safe YAML read closer to YAML 1.2, which is what marketers expect.

    Only ``true``/``false`` are booleans (not ``on``/``off``/``yes``/``no``, so a country
    code ``NO`` stays a string); ``1:30`` is not sexagesimal 90 and ``010`` is not octal
    8; timestamps stay strings for pydantic to parse (with their time zone); a key
    repeated in one mapping is an error rather than a silent overwrite.
    """

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # a later explicit key overriding a merged one is fine
            key = getattr(key_node, "value", None)
            if isinstance(key, str):
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep)


_DROPPED_TAGS = {
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:timestamp",
}
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in _DROPPED_TAGS]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^[-+]?(?:0|[1-9][0-9_]*)$"), list("-+0123456789")
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?$"),
    list("-+0123456789."),
)


def _load(data: bytes, filename: str | None) -> tuple[Any, Any]:
    """Decode and parse; return ``(document, yaml_root_node_or_None)``."""
    if not data.strip():
        raise SpecError([_detail(None, None, "the file is empty")])
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise SpecError(
            [_detail(None, None, f"not UTF-8 text (bad byte at line {line})", line)]
        ) from None
    _refuse_raw_controls(text)
    name = (filename or "").lower()
    if name.endswith(".json"):
        return _load_json(text), None
    if not name.endswith((".yaml", ".yml")) and text.lstrip()[:1] in ("{", "["):
        try:
            return _load_json(text), None
        except SpecError:
            pass  # YAML flow style also starts with a bracket; let YAML have a go
    return _load_yaml(text)


def _codepoint(char: str) -> str:
    return f"U+{ord(char):04X}"


def _refuse_raw_controls(text: str) -> None:
    """Every control character in the text, by line and column, before a parser sees it."""
    details = []
    for m in _RAW_CONTROL_RE.finditer(text):
        line, col = _line_col(text, m.start())
        reason = (
            f"control character {_codepoint(m[0])} at line {line}, column {col} "
            "(not allowed in a campaigns file)"
        )
        details.append(_detail(None, None, reason, line))
        if len(details) == 20:
            break
    if details:
        raise SpecError(details)


def _control_details(doc: Any, root: Any) -> list[dict[str, Any]]:
    """Keys and strings of the parsed document holding control characters (from escapes
    such as ``\\u0000``), each named by campaign and field."""
    raw_campaigns = doc.get("campaigns") if isinstance(doc, Mapping) else doc
    out: list[dict[str, Any]] = []
    stack: list[tuple[Any, list[str | int]]] = [(doc, [])]
    while stack and len(out) < 20:
        item, path = stack.pop()
        if isinstance(item, str):
            bad = _VALUE_CONTROL_RE.search(item)
            if bad is None:
                continue
            loc: list[str | int] = [*path]
            if isinstance(doc, list):
                loc = ["campaigns", *loc]
            campaign = None
            if len(loc) >= 2 and loc[0] == "campaigns" and isinstance(loc[1], int):
                campaign = _campaign_key(raw_campaigns, loc[1])
                field = _field_path(loc[2:])
            else:
                field = _field_path(loc)
            reason = f"contains control character {_codepoint(bad[0])} (not allowed)"
            out.append(_detail(campaign, field or None, reason, _line_of(root, path)))
        elif isinstance(item, Mapping):
            for key, value in item.items():
                stack.append((key, path))  # a bad key is reported at its mapping
                stack.append((value, [*path, str(key)]))
        elif isinstance(item, list):
            stack.extend((value, [*path, i]) for i, value in enumerate(item))
    return out


def _load_json(text: str) -> Any:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise ValueError(f"duplicate key {key!r}")
            out[key] = value
        return out

    try:
        return json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as exc:
        raise SpecError(
            [_detail(None, None, f"JSON syntax error at line {exc.lineno}: {exc.msg}", exc.lineno)]
        ) from None
    except ValueError as exc:
        raise SpecError([_detail(None, None, f"JSON error: {exc}")]) from None


def _load_yaml(text: str) -> tuple[Any, Any]:
    loader = None
    try:
        loader = _Loader(text)  # its reader checks the first characters already
        node = loader.get_single_node()
        doc = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = " ".join(p for p in (exc.context, exc.problem) if p)
        at = f" at line {line}" if line else ""
        raise SpecError([_detail(None, None, f"YAML syntax error{at}: {problem}", line)]) from None
    except yaml.YAMLError as exc:
        raise SpecError([_detail(None, None, f"YAML error: {exc}")]) from None
    finally:
        if loader is not None:
            loader.dispose()
    return doc, node


def _too_big(doc: Any) -> bool:
    budget = _MAX_NODES
    stack = [doc]
    while stack:
        budget -= 1
        if budget < 0:
            return True
        item = stack.pop()
        if isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


# --- ValidationError → details -------------------------------------------------------

# For "did you mean" hints on unknown fields: every field name of every model above.
_ALL_FIELDS = sorted({name for model in _Spec.__subclasses__() for name in model.model_fields})


def _field_path(parts: Sequence[str | int]) -> str:
    path = ""
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part != "[key]":  # pydantic's marker for a bad dict key, not a path step
            path += f".{part}" if path else part
    return path


def _reason(err: Mapping[str, Any]) -> str:
    kind, msg, value = err["type"], err["msg"], err.get("input")
    loc = err["loc"]
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        name = str(loc[-1]) if loc else "?"
        close = difflib.get_close_matches(name, _ALL_FIELDS, n=1)
        return f"unknown field {name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
    if kind == "value_error":
        return str(msg).removeprefix("Value error, ")
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a mapping of fields, got {value!r}"
    if kind == "list_type":
        return f"expected a list, got {value!r}"
    if isinstance(value, _SCALAR):
        return f"{msg} (got {value!r})"
    return str(msg)


def _campaign_key(raw_campaigns: Any, index: int) -> str:
    item = raw_campaigns[index] if isinstance(raw_campaigns, list) else None
    cid = _int_to_str(item.get("id")) if isinstance(item, Mapping) else None
    return cid if isinstance(cid, str) and _ID_RE.match(cid) else f"#{index + 1}"


def _line_of(root: Any, steps: Sequence[str | int]) -> int | None:
    """Line of the deepest YAML node reachable along ``steps`` (None without a tree)."""
    if root is None:
        return None
    node: Any = root
    line: int = root.start_mark.line + 1
    for step in steps:
        if isinstance(node, yaml.SequenceNode) and isinstance(step, int):
            if not 0 <= step < len(node.value):
                break
            node = node.value[step]
            line = node.start_mark.line + 1
        elif isinstance(node, yaml.MappingNode) and isinstance(step, str):
            pair = next((kv for kv in node.value if kv[0].value == step), None)
            if pair is None:
                break
            line, node = pair[0].start_mark.line + 1, pair[1]
        else:
            break
    return line


def _details(exc: ValidationError, doc: Any, root: Any, *, skip_dups: bool) -> list[dict[str, Any]]:
    raw_campaigns = doc.get("campaigns") if isinstance(doc, Mapping) else doc
    out = []
    for err in exc.errors():
        if skip_dups and err["type"] == "duplicate_campaign_id":
            continue
        loc = list(err["loc"])
        campaign = None
        if len(loc) >= 2 and loc[0] == "campaigns" and isinstance(loc[1], int):
            campaign = _campaign_key(raw_campaigns, loc[1])
            field = _field_path(loc[2:])
        else:
            field = _field_path(loc)
        node_steps = loc[1:] if isinstance(doc, list) and loc[:1] == ["campaigns"] else loc
        out.append(_detail(campaign, field or None, _reason(err), _line_of(root, node_steps)))
    return out


def _duplicate_details(doc: Any, root: Any) -> list[dict[str, Any]]:
    raw_campaigns = doc.get("campaigns") if isinstance(doc, Mapping) else doc
    if not isinstance(raw_campaigns, list):
        return []
    prefix: list[str | int] = [] if isinstance(doc, list) else ["campaigns"]
    first: dict[str, int] = {}
    out = []
    for i, item in enumerate(raw_campaigns):
        cid = _int_to_str(item.get("id")) if isinstance(item, Mapping) else None
        if not isinstance(cid, str) or not _ID_RE.match(cid):
            continue
        if cid in first:
            reason = f"duplicate campaign id {cid!r}: #{i + 1} repeats #{first[cid] + 1}"
            out.append(_detail(cid, "id", reason, _line_of(root, [*prefix, i, "id"])))
        else:
            first[cid] = i
    return out


# --- public entry points -------------------------------------------------------------


def parse_campaign_file(data: bytes, filename: str | None = None) -> CampaignFile:
    """Parse and validate a campaigns file (YAML or JSON, by extension or by sniffing).

    Raises :class:`SpecError` with every problem found, not just the first.
    """
    doc, root = _load(data, filename)
    if doc is None:
        raise SpecError([_detail(None, None, "the file is empty")])
    if not isinstance(doc, Mapping | list):
        raise SpecError(
            [
                _detail(
                    None,
                    None,
                    "expected a mapping with 'campaigns' (and optional 'policies') "
                    f"or a list of campaigns, got {type(doc).__name__}",
                    _line_of(root, []),
                )
            ]
        )
    if _too_big(doc):
        raise SpecError([_detail(None, None, "the file expands to too many values (aliases?)")])
    controls = _control_details(doc, root)
    if controls:
        raise SpecError(controls)
    duplicates = _duplicate_details(doc, root)
    try:
        parsed = CampaignFile.model_validate(doc)
    except ValidationError as exc:
        raise SpecError(_details(exc, doc, root, skip_dups=True) + duplicates) from None
    return parsed


def campaign_to_doc(campaign: Campaign) -> dict[str, Any]:
    """JSON-able dict for storage; durations as int seconds, windows as text."""
    return campaign.model_dump(mode="json")


def campaign_from_doc(doc: Mapping[str, Any]) -> Campaign:
    """Inverse of :func:`campaign_to_doc`; raises :class:`SpecError` if invalid."""
    try:
        return Campaign.model_validate(doc)
    except ValidationError as exc:
        cid = _int_to_str(doc.get("id")) if isinstance(doc, Mapping) else None
        key = cid if isinstance(cid, str) and _ID_RE.match(cid) else "#1"
        details = _details(exc, None, None, skip_dups=False)
        for d in details:
            d["campaign"] = key
        raise SpecError(details) from None
