"""The DESIGN §4 decision rules: each reason code, store-local time (DST), facts, arms."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from service.campaigns.rules import (
    assign_arm,
    audience_reason,
    bucket,
    condition_holds,
    derive_facts,
    exception_reason,
    rank,
    render_message,
    schedule_reason,
    targets,
    trigger_reason,
)
from service.campaigns.spec import (
    Audience,
    Campaign,
    Condition,
    ExceptionRule,
    Policies,
    Trigger,
)
from service.reasons import Reason

NOW = datetime(2026, 5, 6, 12, 0, tzinfo=UTC)  # a Wednesday
NY = "America/New_York"


def camp(cid: str = "c1", **extra: Any) -> Campaign:
    doc = {
        "id": cid,
        "trigger": {"type": "enter"},
        "offer": {"title": "Hi", "message": "Hello"},
    } | extra
    return Campaign.model_validate(doc)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, sec: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, sec, tzinfo=UTC)


def cond(field: str, op: str, value: Any = None) -> Condition:
    return Condition.model_validate({"field": field, "op": op, "value": value})


NO_POLICIES = Policies()


def test_reason_codes_are_unique_snake_case() -> None:
    values = [r.value for r in Reason]
    assert len(values) == len(set(values))
    assert all(v.islower() and " " not in v for v in values)
    # a StrEnum member is a plain str, so it compares and serialises as its code
    assert isinstance(Reason.QUIET_HOURS, str) and f"{Reason.QUIET_HOURS}" == "quiet_hours"


# --- status, dates -------------------------------------------------------------------


def test_active_campaign_without_limits_passes() -> None:
    assert schedule_reason(camp(), NO_POLICIES, NOW, "UTC") is None


def test_paused() -> None:
    assert schedule_reason(camp(status="paused"), NO_POLICIES, NOW, "UTC") == "campaign_paused"


def test_start_and_end_are_half_open() -> None:
    c = camp(starts_at="2026-05-06T12:00:00Z", ends_at="2026-05-07T12:00:00Z")
    assert schedule_reason(c, None, NOW - timedelta(seconds=1), "UTC") == Reason.NOT_STARTED
    assert schedule_reason(c, None, NOW, "UTC") is None
    end = utc(2026, 5, 7, 12)
    assert schedule_reason(c, None, end - timedelta(microseconds=1), "UTC") is None
    assert schedule_reason(c, None, end, "UTC") == Reason.ENDED


def test_start_in_another_offset_compares_as_an_instant() -> None:
    c = camp(starts_at="2026-05-06T08:00:00-04:00")  # 12:00 UTC
    assert schedule_reason(c, None, NOW - timedelta(seconds=1), "UTC") == Reason.NOT_STARTED
    assert schedule_reason(c, None, NOW, "UTC") is None


# --- schedule in store local time ----------------------------------------------------


def morning(**schedule: Any) -> Campaign:
    return camp(schedule={"hours": ["07:00-11:00"], **schedule})


def test_schedule_uses_the_store_time_zone() -> None:
    c = morning()
    # 12:00 UTC is 08:00 in New York (EDT) but 21:00 in Tokyo.
    assert schedule_reason(c, None, NOW, NY) is None
    assert schedule_reason(c, None, NOW, "Asia/Tokyo") == Reason.OUTSIDE_SCHEDULE
    assert schedule_reason(c, None, NOW, "UTC") == Reason.OUTSIDE_SCHEDULE


def test_window_end_is_exclusive() -> None:
    c = morning()
    assert schedule_reason(c, None, utc(2026, 5, 6, 14, 59, 59), NY) is None
    assert schedule_reason(c, None, utc(2026, 5, 6, 15), NY) == Reason.OUTSIDE_SCHEDULE
    assert schedule_reason(c, None, utc(2026, 5, 6, 11), NY) is None


def test_days_are_store_local_days() -> None:
    c = camp(schedule={"days": ["wed"]})
    # Wednesday 23:30 in New York is already Thursday 03:30 UTC.
    assert schedule_reason(c, None, utc(2026, 5, 7, 3, 30), NY) is None
    assert schedule_reason(c, None, utc(2026, 5, 7, 3, 30), "UTC") == Reason.OUTSIDE_SCHEDULE
    assert schedule_reason(c, None, utc(2026, 5, 6, 3, 30), NY) == Reason.OUTSIDE_SCHEDULE


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        # 2026-03-08 (Sunday): clocks jump 02:00 EST → 03:00 EDT, so 07:00 local = 11:00Z.
        (utc(2026, 3, 8, 11, 0), None),
        (utc(2026, 3, 8, 10, 59), Reason.OUTSIDE_SCHEDULE),  # 06:59 EDT
        (utc(2026, 3, 8, 14, 59), None),  # 10:59 EDT
        (utc(2026, 3, 8, 15, 0), Reason.OUTSIDE_SCHEDULE),  # 11:00 EDT
        # the day before is still EST: 07:00 local = 12:00Z
        (utc(2026, 3, 7, 11, 30), Reason.OUTSIDE_SCHEDULE),
        (utc(2026, 3, 7, 12, 0), None),
        # 2026-11-01 (Sunday): clocks fall back 02:00 EDT → 01:00 EST, 07:00 local = 12:00Z.
        (utc(2026, 11, 1, 11, 30), Reason.OUTSIDE_SCHEDULE),  # 06:30 EST
        (utc(2026, 11, 1, 12, 0), None),
        (utc(2026, 11, 1, 15, 59), None),  # 10:59 EST
        (utc(2026, 11, 1, 16, 0), Reason.OUTSIDE_SCHEDULE),
    ],
)
def test_new_york_dst_days(moment: datetime, expected: Reason | None) -> None:
    assert schedule_reason(morning(), None, moment, NY) == expected


def test_repeated_hour_on_fall_back_is_covered_both_times() -> None:
    c = camp(schedule={"hours": ["01:00-02:00"]})
    assert schedule_reason(c, None, utc(2026, 11, 1, 5, 30), NY) is None  # 01:30 EDT
    assert schedule_reason(c, None, utc(2026, 11, 1, 6, 30), NY) is None  # 01:30 EST
    assert schedule_reason(c, None, utc(2026, 11, 1, 7, 0), NY) == Reason.OUTSIDE_SCHEDULE


def test_skipped_hour_on_spring_forward_never_happens() -> None:
    c = camp(schedule={"hours": ["02:00-03:00"]})
    for minute in range(0, 24 * 60, 15):
        moment = utc(2026, 3, 8) + timedelta(minutes=minute)
        assert schedule_reason(c, None, moment, NY) == Reason.OUTSIDE_SCHEDULE


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        # BST starts 2026-03-29 01:00Z: 09:00 local = 08:00Z that day, 09:00Z the day before.
        (utc(2026, 3, 29, 8, 30), None),
        (utc(2026, 3, 28, 8, 30), Reason.OUTSIDE_SCHEDULE),
        (utc(2026, 3, 28, 9, 30), None),
        # BST ends 2026-10-25 01:00Z: 09:00 local = 09:00Z that day.
        (utc(2026, 10, 25, 8, 30), Reason.OUTSIDE_SCHEDULE),
        (utc(2026, 10, 25, 9, 30), None),
        (utc(2026, 10, 24, 8, 30), None),
    ],
)
def test_london_dst_days(moment: datetime, expected: Reason | None) -> None:
    c = camp(schedule={"hours": ["09:00-10:00"]})
    assert schedule_reason(c, None, moment, "Europe/London") == expected


@pytest.mark.parametrize(
    ("local", "expected"),
    [
        ((2026, 5, 8, 23, 0), None),  # Friday 23:00: started Friday
        ((2026, 5, 9, 1, 0), None),  # Saturday 01:00: Friday's window
        ((2026, 5, 9, 2, 0), Reason.OUTSIDE_SCHEDULE),  # window over
        ((2026, 5, 8, 1, 0), Reason.OUTSIDE_SCHEDULE),  # Friday 01:00 is Thursday's night
        ((2026, 5, 9, 23, 0), Reason.OUTSIDE_SCHEDULE),  # Saturday night is not scheduled
        ((2026, 5, 8, 21, 59), Reason.OUTSIDE_SCHEDULE),
    ],
)
def test_overnight_window_belongs_to_the_day_it_starts(
    local: tuple[int, int, int, int, int], expected: Reason | None
) -> None:
    from zoneinfo import ZoneInfo

    c = camp(schedule={"days": ["fri"], "hours": ["22:00-02:00"]})
    moment = datetime(*local, tzinfo=ZoneInfo(NY)).astimezone(UTC)
    assert schedule_reason(c, None, moment, NY) == expected


def test_overnight_window_across_the_week_boundary() -> None:
    c = camp(schedule={"days": ["sun"], "hours": ["20:00-06:00"]})
    assert schedule_reason(c, None, utc(2026, 5, 11, 3), "UTC") is None  # Monday 03:00
    assert (
        schedule_reason(c, None, utc(2026, 5, 10, 3), "UTC") == Reason.OUTSIDE_SCHEDULE
    )  # Sunday 03:00


def test_several_windows() -> None:
    c = camp(schedule={"hours": ["07:00-09:00", "17:00-19:00"]})
    assert schedule_reason(c, None, utc(2026, 5, 6, 8), "UTC") is None
    assert schedule_reason(c, None, utc(2026, 5, 6, 18), "UTC") is None
    assert schedule_reason(c, None, utc(2026, 5, 6, 12), "UTC") == Reason.OUTSIDE_SCHEDULE


def test_naive_now_is_taken_as_utc() -> None:
    naive = datetime(2026, 5, 6, 12, 0)
    assert schedule_reason(morning(), None, naive, NY) is None


# --- quiet hours ---------------------------------------------------------------------


QUIET = Policies.model_validate({"quiet_hours": "21:00-08:00"})


@pytest.mark.parametrize(
    ("local_hm", "expected"),
    [((21, 0), Reason.QUIET_HOURS), ((23, 59), Reason.QUIET_HOURS), ((0, 0), Reason.QUIET_HOURS),
     ((7, 59), Reason.QUIET_HOURS), ((8, 0), None), ((20, 59), None), ((12, 0), None)],
)  # fmt: skip
def test_quiet_hours_overnight_in_store_time(
    local_hm: tuple[int, int], expected: Reason | None
) -> None:
    h, m = local_hm
    moment = utc(2026, 5, 6, h, m) + timedelta(hours=4)  # EDT is UTC-4
    assert schedule_reason(camp(), QUIET, moment, NY) == expected


def test_quiet_hours_depend_on_the_store_zone() -> None:
    moment = utc(2026, 5, 6, 14)  # 10:00 New York, 23:00 Tokyo
    assert schedule_reason(camp(), QUIET, moment, NY) is None
    assert schedule_reason(camp(), QUIET, moment, "Asia/Tokyo") == Reason.QUIET_HOURS


def test_quiet_hours_on_dst_day() -> None:
    # 2026-11-01 07:30 EST = 12:30Z: still quiet; 08:00 EST = 13:00Z: not.
    assert schedule_reason(camp(), QUIET, utc(2026, 11, 1, 12, 30), NY) == Reason.QUIET_HOURS
    assert schedule_reason(camp(), QUIET, utc(2026, 11, 1, 13), NY) is None


def test_schedule_is_reported_before_quiet_hours() -> None:
    moment = utc(2026, 5, 7, 2)  # 22:00 New York
    assert schedule_reason(morning(), QUIET, moment, NY) == Reason.OUTSIDE_SCHEDULE


# --- targeting and trigger -----------------------------------------------------------


def test_targets() -> None:
    assert targets(camp(), "any", [])
    c = camp(targeting={"store_ids": ["s-001"], "tags": ["downtown"]})
    assert targets(c, "s-001", [])
    assert targets(c, "s-999", ["mall", "Downtown"])
    assert not targets(c, "s-999", ["mall"])
    assert not targets(c, "S-001", [])


def test_trigger_reason() -> None:
    enter = Trigger(type="enter")
    dwell = Trigger(type="dwell", dwell_s=300)
    assert trigger_reason(enter, "enter", 0) is None
    assert trigger_reason(enter, "dwell", 600) == Reason.TRIGGER_MISMATCH
    assert trigger_reason(dwell, "enter", 0) == Reason.TRIGGER_MISMATCH
    assert trigger_reason(dwell, "dwell", 299.9) == Reason.TRIGGER_MISMATCH
    assert trigger_reason(dwell, "dwell", 300) is None
    assert trigger_reason(dwell, "enter", 301) is None  # a later ping, long enough inside


# --- conditions and audience ---------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "value", "expected"),
    [("exists", None, False), ("not_exists", None, True), ("eq", "gold", False),
     ("ne", "gold", True), ("in", ["gold"], False), ("not_in", ["gold"], True),
     ("gt", 1, False), ("gte", 1, False), ("lt", 1, False), ("lte", 1, False)],
)  # fmt: skip
def test_missing_field_semantics(op: str, value: Any, expected: bool) -> None:
    c = cond("tier", op, value)
    assert condition_holds(c, {}) is expected
    assert condition_holds(c, {"tier": None}) is expected  # null reads as missing


@pytest.mark.parametrize(
    ("fact", "op", "value", "expected"),
    [
        ("gold", "eq", "gold", True),
        ("Gold", "eq", "gold", False),  # case-sensitive
        (7, "eq", 7.0, True),
        (1, "eq", True, False),  # no True == 1
        (True, "eq", True, True),
        (False, "eq", False, True),
        (False, "ne", True, True),
        ("7", "eq", 7, False),
        ("gold", "in", ["gold", "platinum"], True),
        ("silver", "in", ["gold", "platinum"], False),
        ("silver", "not_in", ["gold"], True),
        ("gold", "not_in", ["gold"], False),
        (["coffee", "tea"], "in", ["tea"], True),  # list attribute: any item
        (["coffee"], "in", ["tea"], False),
        (7, "gte", 7, True),
        (6.99, "gte", 7, False),
        (8, "gt", 7, True),
        (3, "lt", 7, True),
        (7, "lte", 7, True),
        ("10", "gt", 7, False),  # type mismatch: False, no exception
        (True, "gt", 0, False),
        ({"a": 1}, "eq", "a", False),
        (float("nan"), "lt", 7, False),
        (0, "exists", None, True),
        (False, "exists", None, True),
        ("", "exists", None, True),
    ],
)
def test_condition_values(fact: Any, op: str, value: Any, expected: bool) -> None:
    assert condition_holds(cond("f", op, value), {"f": fact}) is expected


def test_audience_reason() -> None:
    audience = Audience.model_validate(
        {
            "include": [
                {"field": "loyalty_tier", "op": "in", "value": ["gold", "platinum"]},
                {"field": "account_age_days", "op": "gte", "value": 7},
            ],
            "exclude": [{"field": "open_support_ticket", "op": "eq", "value": True}],
        }
    )
    good = {"loyalty_tier": "gold", "account_age_days": 10.0, "open_support_ticket": False}
    assert audience_reason(audience, good) is None
    assert audience_reason(audience, good | {"account_age_days": 0.001}) == "audience_not_included"
    assert audience_reason(audience, {"account_age_days": 10}) == Reason.AUDIENCE_NOT_INCLUDED
    assert audience_reason(audience, good | {"open_support_ticket": True}) == "audience_excluded"
    assert audience_reason(Audience(), {}) is None


# --- derived facts -------------------------------------------------------------------


def test_account_age_from_signup_attribute() -> None:
    three_days = (NOW - timedelta(days=3)).isoformat().replace("+00:00", "Z")
    facts = derive_facts({"signup_at": three_days}, [], NOW)
    assert facts["account_age_days"] == pytest.approx(3.0)
    facts = derive_facts({"signup_at": NOW - timedelta(days=3, hours=12)}, [], NOW)
    assert facts["account_age_days"] == pytest.approx(3.5)


def test_account_age_from_earliest_signup_event_and_absent_when_unknown() -> None:
    events = [("signup", NOW - timedelta(days=2)), ("signup", NOW - timedelta(days=5))]
    assert derive_facts({}, events, NOW)["account_age_days"] == pytest.approx(5.0)
    assert "account_age_days" not in derive_facts({}, [], NOW)
    assert "account_age_days" not in derive_facts({"signup_at": "not a date"}, [], NOW)


def test_seconds_after_install_account_age_is_tiny() -> None:
    facts = derive_facts({"signup_at": NOW - timedelta(seconds=30)}, [], NOW)
    assert not condition_holds(cond("account_age_days", "gte", 7), facts)


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        ([], False),
        ([("support_ticket_opened", NOW - timedelta(days=2))], True),
        ([("support_ticket_opened", NOW - timedelta(days=2)),
          ("support_ticket_closed", NOW - timedelta(days=1))], False),
        ([("support_ticket_closed", NOW - timedelta(days=3)),
          ("support_ticket_opened", NOW - timedelta(days=2))], True),
        ([("support_ticket_opened", NOW - timedelta(days=5)),
          ("support_ticket_closed", NOW - timedelta(days=4)),
          ("support_ticket_opened", NOW - timedelta(hours=1))], True),
    ],
)  # fmt: skip
def test_open_support_ticket(events: list[tuple[str, datetime]], expected: bool) -> None:
    assert derive_facts({}, events, NOW)["open_support_ticket"] is expected


def test_purchase_and_billing_facts() -> None:
    events = [
        ("purchase", NOW - timedelta(days=40)),
        ("purchase", NOW - timedelta(days=10)),
        ("purchase", NOW - timedelta(days=2)),
        ("payment_failed", NOW - timedelta(days=20)),
        ("billing_issue", NOW - timedelta(days=12)),
    ]
    facts = derive_facts({}, events, NOW)
    assert facts["days_since_last_purchase"] == pytest.approx(2.0)
    assert facts["purchases_30d"] == 2
    assert facts["days_since_billing_issue"] == pytest.approx(12.0)
    empty = derive_facts({}, [], NOW)
    assert "days_since_last_purchase" not in empty and "days_since_billing_issue" not in empty
    assert empty["purchases_30d"] == 0
    # never had a billing issue: "<= 30" does not hold, "not_exists" does
    assert not condition_holds(cond("days_since_billing_issue", "lte", 30), empty)


def test_backend_attribute_wins_over_derived_fact() -> None:
    events = [("support_ticket_opened", NOW - timedelta(days=1))]
    facts = derive_facts({"open_support_ticket": False, "purchases_30d": 9}, events, NOW)
    assert facts["open_support_ticket"] is False and facts["purchases_30d"] == 9
    # a null attribute does not hide the derived value
    assert derive_facts({"open_support_ticket": None}, events, NOW)["open_support_ticket"]


def test_attributes_pass_through_and_far_future_events_are_ignored() -> None:
    facts = derive_facts({"loyalty_tier": "gold"}, [("purchase", NOW + timedelta(days=1))], NOW)
    assert facts["loyalty_tier"] == "gold" and "days_since_last_purchase" not in facts


# --- exception events ----------------------------------------------------------------


DAY_RULE = [ExceptionRule(event="purchase", within=86_400)]


@pytest.mark.parametrize(
    ("offset", "expected"),
    [
        (timedelta(seconds=-1), Reason.EXCEPTION_EVENT),
        (timedelta(0), Reason.EXCEPTION_EVENT),
        (timedelta(hours=-23, minutes=-59), Reason.EXCEPTION_EVENT),
        (timedelta(days=-1), Reason.EXCEPTION_EVENT),  # the window's edge counts
        (timedelta(days=-1, seconds=-1), None),
        (timedelta(minutes=4), Reason.EXCEPTION_EVENT),  # clock skew
        (timedelta(minutes=10), None),
    ],
)
def test_exception_window(offset: timedelta, expected: Reason | None) -> None:
    assert exception_reason(DAY_RULE, [("purchase", NOW + offset)], NOW) == expected


def test_exception_other_events_and_several_rules() -> None:
    assert exception_reason(DAY_RULE, [("signup", NOW)], NOW) is None
    assert exception_reason([], [("purchase", NOW)], NOW) is None
    rules = [
        ExceptionRule(event="purchase", within=3_600),
        ExceptionRule(event="purchase", within=7 * 86_400),
    ]
    assert exception_reason(rules, [("purchase", NOW - timedelta(days=3))], NOW) == (
        Reason.EXCEPTION_EVENT
    )


def test_exception_with_naive_event_time() -> None:
    naive = (NOW - timedelta(minutes=5)).replace(tzinfo=None)
    assert exception_reason(DAY_RULE, [("purchase", naive)], NOW) == Reason.EXCEPTION_EVENT


# --- rollout and holdout -------------------------------------------------------------


def test_bucket_is_a_pinned_sha256() -> None:
    # Pinned: changing the hash would silently move users between arms mid-experiment.
    digest = hashlib.sha256(b"latte-morning:user-42").digest()
    expected = int.from_bytes(digest[:8], "big") / 2**64 * 100
    assert bucket("latte-morning", "user-42") == expected
    assert bucket("latte-morning", "user-42") == pytest.approx(bucket("latte-morning", "user-42"))
    assert 0 <= bucket("x", "y") < 100
    assert bucket("a", "u", salt="holdout") != bucket("a", "u")


def test_holdout_share_and_stability() -> None:
    c = camp("holdout-test", holdout_pct=20)
    users = [f"user-{i}" for i in range(10_000)]
    arms = [assign_arm(c, u) for u in users]
    share = arms.count("control") / len(users)
    assert 0.18 <= share <= 0.22
    assert "not_in_rollout" not in arms
    assert [assign_arm(c, u) for u in users] == arms


def test_holdout_is_a_share_of_the_rolled_out_users() -> None:
    c = camp("half", rollout_pct=50, holdout_pct=20)
    arms = [assign_arm(c, f"u{i}") for i in range(10_000)]
    rolled = [a for a in arms if a != "not_in_rollout"]
    assert 0.47 <= len(rolled) / len(arms) <= 0.53
    assert 0.18 <= rolled.count("control") / len(rolled) <= 0.22


def test_widening_the_rollout_keeps_arms() -> None:
    narrow = camp("grow", rollout_pct=10, holdout_pct=30)
    wide = camp("grow", rollout_pct=60, holdout_pct=30)
    for i in range(2_000):
        before = assign_arm(narrow, f"u{i}")
        if before != "not_in_rollout":
            assert assign_arm(wide, f"u{i}") == before


def test_rollout_extremes() -> None:
    users = [f"u{i}" for i in range(500)]
    assert {assign_arm(camp(rollout_pct=0), u) for u in users} == {"not_in_rollout"}
    assert {assign_arm(camp(), u) for u in users} == {"treatment"}
    assert {assign_arm(camp(holdout_pct=100), u) for u in users} == {"control"}


# --- rank ----------------------------------------------------------------------------


def test_rank_priority_then_value_then_id() -> None:
    def offer(value: float) -> dict[str, Any]:
        return {"title": "t", "message": "m", "value": value}

    cs = [
        camp("b", priority=1, offer=offer(5)),
        camp("a", priority=1, offer=offer(5)),
        camp("c", priority=1, offer=offer(10)),
        camp("z", priority=2, offer=offer(0)),
        camp("d", priority=-1, offer=offer(100)),
    ]
    assert [c.id for c in rank(cs)] == ["z", "c", "a", "b", "d"]
    assert [c.id for c in rank(reversed(cs))] == ["z", "c", "a", "b", "d"]
    assert rank([]) == []


# --- messages ------------------------------------------------------------------------

GREETING = 'Hi {{ first_name | default: "there" }}, 20% off at {{ store.name }}.'


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        ({}, "Hi there, 20% off at Main St."),
        ({"first_name": ""}, "Hi there, 20% off at Main St."),
        ({"first_name": None}, "Hi there, 20% off at Main St."),
        ({"first_name": "Ada"}, "Hi Ada, 20% off at Main St."),
    ],
)
def test_render_default_first_name(attributes: dict[str, Any], expected: str) -> None:
    assert render_message(GREETING, attributes, {"store_id": "s-1", "name": "Main St"}) == expected


def test_render_undefined_is_empty_and_single_quotes_work() -> None:
    assert render_message("[{{ nope }}][{{ store.nope.deeper }}]", {}, {}) == "[][]"
    src = "Hi {{ first_name | default: 'there' }}"
    assert render_message(src, {"first_name": "Bo"}, {}) == "Hi Bo"


def test_render_store_wins_over_an_attribute_named_store() -> None:
    assert render_message("{{ store.name }}", {"store": "x"}, {"name": "Real"}) == "Real"


def test_render_runtime_error_gives_empty_message_not_exception() -> None:
    assert render_message("{{ 10 | divided_by: n }}", {"n": 0}, {}) == ""


def test_campaign_modules_are_pure() -> None:
    # The rules must stay importable (and benchmarkable) without the web or storage stack.
    code = (
        "import sys, service.campaigns.rules, service.campaigns.spec; "
        "print(sorted(m for m in ('fastapi', 'sqlalchemy', 'redis', 'starlette') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
