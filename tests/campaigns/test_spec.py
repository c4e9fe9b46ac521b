"""The campaigns file (DESIGN §6): the example parses, every realistic mistake is named."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from service.campaigns.spec import (
    Campaign,
    CampaignFile,
    SpecError,
    Window,
    campaign_from_doc,
    campaign_to_doc,
    parse_campaign_file,
    parse_duration,
)

EXAMPLE_YAML = """\
policies:                         # across all campaigns, per user
  caps: [{count: 2, window: 24h}]
  channel_caps: {push: [{count: 1, window: 24h}]}
  min_gap: 30m                    # between any two offers
  quiet_hours: "21:00-08:00"      # store local time
campaigns:
  - id: latte-morning
    name: Morning latte
    status: active                # active | paused
    starts_at: 2026-01-01T00:00:00Z
    ends_at: 2027-01-01T00:00:00Z
    channel: push                 # push | in_app
    priority: 10
    trigger: {type: enter}        # or {type: dwell, dwell_s: 300}
    targeting: {store_ids: [s-001], tags: [downtown]}   # any match; absent = all stores
    schedule: {days: [mon, tue, wed, thu, fri], hours: ["07:00-11:00"]}  # store local time
    audience:
      include: [{field: loyalty_tier, op: in, value: [gold, platinum]},
                {field: account_age_days, op: gte, value: 7}]
      exclude: [{field: open_support_ticket, op: eq, value: true}]
    exceptions: [{event: purchase, within: 24h}]
    caps: [{count: 1, window: 24h}, {count: 3, window: 7d}]      # this campaign, per user
    budget: {total: 10000, per_day: 500}
    rollout_pct: 100
    holdout_pct: 10
    offer:
      title: 20% off your latte
      message: "Hi {{ first_name | default: 'there' }}, 20% off at {{ store.name }} until 11."
      value: 20
      coupon: {type: unique, prefix: LATTE-}   # or {type: fixed, code: LATTE20}
      expires_in: 2h
"""

EXAMPLE_DOC: dict[str, Any] = {
    "policies": {
        "caps": [{"count": 2, "window": "24h"}],
        "channel_caps": {"push": [{"count": 1, "window": "24h"}]},
        "min_gap": "30m",
        "quiet_hours": "21:00-08:00",
    },
    "campaigns": [
        {
            "id": "latte-morning",
            "name": "Morning latte",
            "status": "active",
            "starts_at": "2026-01-01T00:00:00Z",
            "ends_at": "2027-01-01T00:00:00Z",
            "channel": "push",
            "priority": 10,
            "trigger": {"type": "enter"},
            "targeting": {"store_ids": ["s-001"], "tags": ["downtown"]},
            "schedule": {"days": ["mon", "tue", "wed", "thu", "fri"], "hours": ["07:00-11:00"]},
            "audience": {
                "include": [
                    {"field": "loyalty_tier", "op": "in", "value": ["gold", "platinum"]},
                    {"field": "account_age_days", "op": "gte", "value": 7},
                ],
                "exclude": [{"field": "open_support_ticket", "op": "eq", "value": True}],
            },
            "exceptions": [{"event": "purchase", "within": "24h"}],
            "caps": [{"count": 1, "window": "24h"}, {"count": 3, "window": "7d"}],
            "budget": {"total": 10000, "per_day": 500},
            "rollout_pct": 100,
            "holdout_pct": 10,
            "offer": {
                "title": "20% off your latte",
                "message": "Hi {{ first_name | default: 'there' }}, 20% off at {{ store.name }} until 11.",
                "value": 20,
                "coupon": {"type": "unique", "prefix": "LATTE-"},
                "expires_in": "2h",
            },
        }
    ],
}


def minimal(cid: str = "c1", **extra: Any) -> dict[str, Any]:
    return {
        "id": cid,
        "trigger": {"type": "enter"},
        "offer": {"title": "Hi", "message": "Hello {{ first_name }}"},
    } | extra


def as_json(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def errors(data: bytes | str, filename: str | None = None) -> list[dict[str, Any]]:
    raw = data.encode() if isinstance(data, str) else data
    with pytest.raises(SpecError) as info:
        parse_campaign_file(raw, filename)
    assert info.value.details, "a SpecError always has details"
    return info.value.details


def one_error(doc: Any) -> dict[str, Any]:
    found = errors(as_json(doc), "c.json")
    assert len(found) == 1, found
    return found[0]


# --- the good file -------------------------------------------------------------------


def test_design_example_parses_from_yaml() -> None:
    parsed = parse_campaign_file(EXAMPLE_YAML.encode(), "campaigns.yaml")
    p = parsed.policies
    assert p.caps[0].count == 2 and p.caps[0].window == 86_400
    assert p.channel_caps["push"][0].window == 86_400
    assert p.min_gap == 1_800
    assert p.quiet_hours is not None and str(p.quiet_hours) == "21:00-08:00"
    assert p.quiet_hours.overnight
    (c,) = parsed.campaigns
    assert c.id == "latte-morning" and c.name == "Morning latte" and c.priority == 10
    assert c.starts_at == datetime(2026, 1, 1, tzinfo=UTC)
    assert c.ends_at == datetime(2027, 1, 1, tzinfo=UTC)
    assert c.trigger.type == "enter" and c.trigger.dwell_s is None
    assert c.targeting.store_ids == ["s-001"] and c.targeting.tags == ["downtown"]
    assert c.schedule.days == ["mon", "tue", "wed", "thu", "fri"]
    assert [str(w) for w in c.schedule.hours] == ["07:00-11:00"]
    assert c.audience.include[0].value == ["gold", "platinum"]
    assert c.audience.exclude[0].value is True
    assert c.exceptions[0].event == "purchase" and c.exceptions[0].within == 86_400
    assert [(cap.count, cap.window) for cap in c.caps] == [(1, 86_400), (3, 604_800)]
    assert c.budget.total == 10_000 and c.budget.per_day == 500
    assert c.rollout_pct == 100 and c.holdout_pct == 10
    assert c.offer.value == 20 and c.offer.expires_in == 7_200
    assert c.offer.coupon.type == "unique" and c.offer.coupon.prefix == "LATTE-"


def test_same_file_as_json_gives_the_same_result() -> None:
    from_yaml = parse_campaign_file(EXAMPLE_YAML.encode(), "campaigns.yaml")
    from_json = parse_campaign_file(as_json(EXAMPLE_DOC), "campaigns.json")
    sniffed = parse_campaign_file(as_json(EXAMPLE_DOC))
    assert from_json == from_yaml == sniffed


def test_unnamed_yaml_flow_document_is_not_mistaken_for_json() -> None:
    data = b"[{id: a, trigger: {type: enter}, offer: {title: t, message: m}}]"
    assert parse_campaign_file(data).campaigns[0].id == "a"
    (detail,) = errors(b"[{id: a,, }", None)
    assert "YAML syntax error" in detail["reason"]


def test_bare_list_of_campaigns_is_accepted() -> None:
    parsed = parse_campaign_file(as_json([minimal("a"), minimal("b")]))
    assert [c.id for c in parsed.campaigns] == ["a", "b"]
    assert parsed.policies.caps == [] and parsed.policies.quiet_hours is None


def test_defaults() -> None:
    c = parse_campaign_file(as_json([minimal("only")])).campaigns[0]
    assert c.name == "only" and c.status == "active" and c.channel == "push"
    assert c.starts_at is None and c.ends_at is None and c.priority == 0
    assert c.schedule.days == ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    assert c.schedule.hours == [] and c.targeting.store_ids == [] == c.targeting.tags
    assert c.audience.include == [] == c.audience.exclude and c.exceptions == [] == c.caps
    assert c.budget.total is None and c.budget.per_day is None
    assert c.rollout_pct == 100 and c.holdout_pct == 0
    assert c.offer.value == 0 and c.offer.expires_in == 86_400
    assert c.offer.coupon.type == "unique" and c.offer.coupon.prefix == ""
    assert c.offer.coupon.code is None
    assert c.trust_checks is True


def test_a_campaign_may_opt_out_of_the_trust_checks() -> None:
    c = parse_campaign_file(as_json([{**minimal("loose"), "trust_checks": False}])).campaigns[0]
    assert c.trust_checks is False
    old = campaign_to_doc(c)
    old.pop("trust_checks")  # a campaign stored before the field existed
    assert campaign_from_doc(old).trust_checks is True
    with pytest.raises(SpecError) as info:
        parse_campaign_file(as_json([{**minimal("x"), "trust_checks": "sometimes"}]))
    assert info.value.details[0]["field"] == "trust_checks"


def test_doc_round_trip_is_json_and_lossless() -> None:
    parsed = parse_campaign_file(EXAMPLE_YAML.encode(), "campaigns.yaml")
    for c in [*parsed.campaigns, Campaign.model_validate(minimal("x"))]:
        doc = json.loads(json.dumps(campaign_to_doc(c)))
        assert campaign_from_doc(doc) == c
    doc = campaign_to_doc(parsed.campaigns[0])
    assert doc["caps"][1] == {"count": 3, "window": 604_800}  # durations stored as seconds
    assert doc["schedule"]["hours"] == ["07:00-11:00"]


def test_campaign_from_doc_raises_spec_error() -> None:
    with pytest.raises(SpecError) as info:
        campaign_from_doc(minimal("x", rollout_pct=300))
    assert info.value.details[0]["campaign"] == "x"
    assert info.value.details[0]["field"] == "rollout_pct"


def test_models_are_frozen() -> None:
    c = Campaign.model_validate(minimal("x"))
    with pytest.raises(ValueError):
        setattr(c, "priority", 5)  # noqa: B010


# --- durations and windows -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30m", 1_800), ("24h", 86_400), ("7d", 604_800), ("2w", 1_209_600), ("45s", 45),
     (90, 90), (" 5m ", 300)],
)  # fmt: skip
def test_durations(text: str | int, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["25hrs", "1 day", "0h", "-1h", "1y", "", "h", "1.5h", "24H"])
def test_bad_durations_name_the_value_and_the_form(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(text)
    message = str(info.value)
    assert repr(text) in message and '"30m"' in message


@pytest.mark.parametrize("value", [0, -5, True, 1.5, None, 10**12])
def test_bad_duration_values(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize(
    ("text", "start", "end", "overnight"),
    [("07:00-11:00", 420, 660, False), ("21:00-08:00", 1260, 480, True),
     ("22:00-24:00", 1320, 1440, False), ("00:00-24:00", 0, 1440, False),
     ("7:30-9:00", 450, 540, False),
     # DESIGN §4: an end of 00:00 is midnight, like 24:00
     ("21:00-00:00", 1260, 1440, False), ("00:00-00:00", 0, 1440, False)],
)  # fmt: skip
def test_windows(text: str, start: int, end: int, overnight: bool) -> None:
    w = Window.model_validate(text)
    assert (w.start, w.end, w.overnight) == (start, end, overnight)


def test_a_window_ending_at_00_00_is_stored_as_24_00_and_covers_the_evening() -> None:
    w = Window.model_validate("21:00-00:00")
    assert str(w) == "21:00-24:00" and w.covers(23 * 60 + 59.5) and not w.covers(20 * 60)
    doc = {"quiet_hours": "21:00-00:00"}
    parsed = parse_campaign_file(json.dumps({"policies": doc, "campaigns": []}).encode(), "c.json")
    assert str(parsed.policies.quiet_hours) == "21:00-24:00"


@pytest.mark.parametrize(
    ("data", "filename", "reason", "line"),
    [
        # raw, as the fuzzer sent it: PyYAML's reader refused it with a ReaderError (a 500)
        (
            "campaigns:\n  - id: a\u009c\n".encode(),
            "c.yaml",
            "control character U+009C at line 2, column 10",
            2,
        ),
        (b"\x01campaigns: []\n", "c.yaml", "control character U+0001 at line 1, column 1", 1),
        (
            b'{"campaigns": [], "x": "a\x07"}',
            "c.json",
            "control character U+0007 at line 1, column 26",
            1,
        ),
    ],
)
def test_raw_control_characters_are_named_before_the_parser_sees_them(
    data: bytes, filename: str, reason: str, line: int
) -> None:
    with pytest.raises(SpecError) as err:
        parse_campaign_file(data, filename)
    assert err.value.details[0]["reason"].startswith(reason)
    assert err.value.details[0]["line"] == line


def test_escaped_control_characters_are_named_by_campaign_and_field() -> None:
    # JSON's \u0000 and YAML's "\x00" reach the document; PostgreSQL's jsonb refuses \u0000.
    doc = json.loads(json.dumps(minimal("c1")))
    doc["offer"]["title"] = "20% off\u0000"
    doc["targeting"] = {"tags": ["ok", "bad\x9c"]}
    with pytest.raises(SpecError) as err:
        parse_campaign_file(json.dumps({"campaigns": [doc]}).encode(), "c.json")
    got = {(d["campaign"], d["field"], d["reason"]) for d in err.value.details}
    assert got == {
        ("c1", "offer.title", "contains control character U+0000 (not allowed)"),
        ("c1", "targeting.tags[1]", "contains control character U+009C (not allowed)"),
    }
    yaml_text = 'campaigns:\n  - id: c2\n    name: "Latte\\x00"\n'
    with pytest.raises(SpecError) as err:
        parse_campaign_file(yaml_text.encode(), "c.yaml")
    assert err.value.details == [
        {
            "campaign": "c2",
            "field": "name",
            "reason": "contains control character U+0000 (not allowed)",
            "line": 3,
        }
    ]


@pytest.mark.parametrize(
    "text", ["7-11", "25:00-26:00", "10:00-10:00", "12:60-13:00", "24:00-01:00", "09:00-24:30"]
)
def test_bad_windows(text: str) -> None:
    with pytest.raises(ValueError, match=f"invalid window '{text}'"):
        Window.model_validate(text)


# --- each realistic mistake names campaign and field ---------------------------------


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node = doc
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return doc


@pytest.mark.parametrize(
    ("path", "value", "field", "reason"),
    [
        ("budgett", {"total": 5}, "budgett", "unknown field 'budgett' (did you mean 'budget'?)"),
        ("caps", [{"count": 1, "window": "25hrs"}], "caps[0].window", "'25hrs'"),
        ("audience.include", [{"field": "tier", "op": "contains", "value": "g"}],
         "audience.include[0].op", "'contains'"),
        ("audience.include", [{"field": "age", "op": "gte", "value": "seven"}],
         "audience.include[0].value", "needs a number"),
        ("audience.include", [{"field": "tier", "op": "in", "value": "gold"}],
         "audience.include[0].value", "needs a non-empty list"),
        ("audience.include", [{"field": "tier", "op": "eq"}],
         "audience.include[0].value", "not_exists"),
        ("audience.exclude", [{"field": "tier", "op": "exists", "value": 1}],
         "audience.exclude[0].value", "takes no value"),
        ("offer.title", "", "offer.title", "at least 1 character"),
        ("offer.title", "   ", "offer.title", "at least 1 character"),
        ("offer.message", "Hi\n{{ first_name | default: 'x' ", "offer.message",
         "Liquid syntax error at line 2, column 1"),
        ("offer.message", "Hi {% if vip %}gold", "offer.message", "Liquid syntax error"),
        ("offer.message", "{{ name | shout }}", "offer.message", "unknown filter 'shout'"),
        ("schedule.hours", ["7-11"], "schedule.hours[0]", "'7-11'"),
        ("schedule.hours", ["25:00-26:00"], "schedule.hours[0]", "not a time of day"),
        ("schedule.days", ["mon", "funday"], "schedule.days[1]", "unknown day 'funday'"),
        ("schedule.days", [], "schedule.days", "at least 1 item"),
        ("trigger", {"type": "dwell"}, "trigger.dwell_s", "dwell_s is required"),
        ("trigger", {"type": "enter", "dwell_s": 60}, "trigger.dwell_s", "only allowed"),
        ("trigger", {"type": "exit"}, "trigger.type", "'exit'"),
        ("offer.coupon", {"type": "fixed"}, "offer.coupon.code", "needs a code"),
        ("offer.coupon", {"type": "unique", "code": "X1"}, "offer.coupon.code", "only for fixed"),
        ("offer.coupon", {"type": "unique", "prefix": "LATTE 20"}, "offer.coupon.prefix",
         "pattern"),
        ("ends_at", "2025-01-01T00:00:00Z", "ends_at", "must be after starts_at"),
        ("starts_at", "2026-06-01T00:00:00", "starts_at", "timezone"),
        ("rollout_pct", 120, "rollout_pct", "less than or equal to 100"),
        ("holdout_pct", -1, "holdout_pct", "greater than or equal to 0"),
        ("status", "archived", "status", "'archived'"),
        ("channel", "sms", "channel", "'sms'"),
        ("priority", True, "priority", "expected a number"),
        ("budget", {"per_day": 0}, "budget.per_day", "greater than or equal to 1"),
        ("exceptions", [{"event": "purchase", "within": "1 day"}], "exceptions[0].within",
         "'1 day'"),
        ("targeting", {"stores": ["s-1"]}, "targeting.stores", "unknown field 'stores'"),
    ],
)  # fmt: skip
def test_mistake_is_named(path: str, value: Any, field: str, reason: str) -> None:
    base = minimal("promo", starts_at="2026-01-01T00:00:00Z")
    detail = one_error([_set(base, path, value)])
    assert detail["campaign"] == "promo"
    assert detail["field"] == field
    assert reason in detail["reason"], detail["reason"]


def test_missing_offer_and_trigger() -> None:
    found = errors(as_json([{"id": "naked"}]))
    assert {(d["campaign"], d["field"]) for d in found} == {
        ("naked", "offer"),
        ("naked", "trigger"),
    }
    assert all(d["reason"] == "required field is missing" for d in found)


def test_three_bad_campaigns_are_all_reported() -> None:
    doc = [
        minimal("a", budgett={"total": 1}),
        minimal("ok"),
        minimal("b", schedule={"hours": ["7-11"]}),
        _set(minimal("c"), "offer.title", ""),
    ]
    found = errors(as_json(doc))
    assert [(d["campaign"], d["field"]) for d in found] == [
        ("a", "budgett"),
        ("b", "schedule.hours[0]"),
        ("c", "offer.title"),
    ]


def test_campaign_without_a_usable_id_is_named_by_position() -> None:
    doc = [minimal("a"), {"trigger": {"type": "enter"}, "offer": {"title": "t", "message": ""}}]
    doc.append(minimal("bad id!"))
    found = errors(as_json(doc))
    assert [(d["campaign"], d["field"]) for d in found] == [("#2", "id"), ("#3", "id")]


def test_duplicate_ids_name_the_second() -> None:
    detail = one_error([minimal("a"), minimal("b"), minimal("a")])
    assert detail["campaign"] == "a" and detail["field"] == "id"
    assert "#3 repeats #1" in detail["reason"]


def test_duplicates_reported_alongside_other_errors() -> None:
    found = errors(as_json([minimal("a"), minimal("a", rollout_pct=101)]))
    assert {d["field"] for d in found} == {"id", "rollout_pct"}


def test_policy_errors_have_no_campaign() -> None:
    doc = {
        "policies": {"min_gap": "25hrs", "channel_caps": {"sms": []}, "quiet_hours": "7-11"},
        "campaigns": [minimal()],
    }
    found = errors(as_json(doc))
    assert {d["field"] for d in found} == {
        "policies.min_gap",
        "policies.channel_caps.sms",
        "policies.quiet_hours",
    }
    assert all(d["campaign"] is None for d in found)


def test_unknown_top_level_key() -> None:
    detail = one_error({"campaign": [minimal()], "campaigns": []})
    assert detail["campaign"] is None and detail["field"] == "campaign"
    assert "did you mean 'campaigns'" in detail["reason"]


def test_message_summarises_the_count() -> None:
    with pytest.raises(SpecError, match=r"^3 errors in the campaigns file \(first: campaign"):
        parse_campaign_file(as_json([{"id": "a", "trigger": {"type": "x"}, "offer": {}}]))


# --- file-level problems -------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"   \n\n", b"---\n", b"# only a comment\n"])
def test_empty_file(data: bytes) -> None:
    (detail,) = errors(data, "c.yaml")
    assert detail["campaign"] is None and "empty" in detail["reason"]


def test_yaml_syntax_error_has_a_line() -> None:
    text = "campaigns:\n  - id: a\n    trigger: {type: enter\n    offer: x\n"
    (detail,) = errors(text, "c.yaml")
    assert detail["reason"].startswith("YAML syntax error at line")
    assert detail["line"] in (3, 4, 5)


def test_json_syntax_error_has_a_line() -> None:
    (detail,) = errors('{"campaigns": [\n  {"id": "a",}\n]}', "c.json")
    assert detail["line"] == 2 and "JSON syntax error at line 2" in detail["reason"]


def test_not_utf8() -> None:
    (detail,) = errors(b"campaigns:\n  - id: caf\xe9\n", "c.yaml")
    assert "UTF-8" in detail["reason"] and detail["line"] == 2


def test_utf8_bom_is_tolerated() -> None:
    parsed = parse_campaign_file(b"\xef\xbb\xbf" + EXAMPLE_YAML.encode(), "c.yaml")
    assert parsed.campaigns[0].id == "latte-morning"


def test_wrong_top_level_type() -> None:
    (detail,) = errors("just a string\n", "c.yaml")
    assert "expected a mapping" in detail["reason"]


def test_yaml_duplicate_key_is_an_error() -> None:
    text = "campaigns:\n  - id: a\n    id: b\n    trigger: {type: enter}\n"
    (detail,) = errors(text, "c.yaml")
    assert "duplicate key 'id'" in detail["reason"] and detail["line"] == 3


def test_json_duplicate_key_is_an_error() -> None:
    (detail,) = errors('{"campaigns": [], "campaigns": []}', "c.json")
    assert "duplicate key" in detail["reason"]


def test_yaml_errors_carry_lines() -> None:
    text = "campaigns:\n  - id: a\n    trigger: {type: enter}\n    budgett: 1\n"
    found = errors(text, "c.yaml")
    lines = {d["field"]: d["line"] for d in found}
    assert lines == {"budgett": 4, "offer": 2}


def test_yaml_11_booleans_and_numbers_stay_strings() -> None:
    text = """\
- id: norway
  name: off
  trigger: {type: enter}
  targeting: {store_ids: [007, 42], tags: [on, yes]}
  audience: {include: [{field: country, op: eq, value: NO}]}
  offer: {title: t, message: m, coupon: {type: fixed, code: 2024}}
"""
    c = parse_campaign_file(text.encode(), "c.yml").campaigns[0]
    assert c.name == "off"
    assert c.targeting.store_ids == ["007", "42"] and c.targeting.tags == ["on", "yes"]
    assert c.audience.include[0].value == "NO"
    assert c.offer.coupon.code == "2024"


def test_yaml_true_false_are_booleans() -> None:
    text = """\
- id: x
  trigger: {type: enter}
  audience: {exclude: [{field: open_support_ticket, op: eq, value: true}]}
  offer: {title: t, message: m}
"""
    c = parse_campaign_file(text.encode(), "c.yaml").campaigns[0]
    assert c.audience.exclude[0].value is True


def test_yaml_alias_bomb_is_refused_quickly() -> None:
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, 9):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 10)}]")
    lines.append("campaigns: *a8")
    (detail,) = errors("\n".join(lines) + "\n", "c.yaml")
    assert "too many values" in detail["reason"]


def test_yaml_anchors_for_reuse_still_work() -> None:
    text = """\
gold: &gold {include: [{field: loyalty_tier, op: eq, value: gold}]}
campaigns: []
"""
    errors_ = errors(text, "c.yaml")
    assert errors_[0]["field"] == "gold"  # unknown top-level key, anchors themselves are fine
    text = """\
- id: a
  trigger: {type: enter}
  audience: &gold {include: [{field: loyalty_tier, op: eq, value: gold}]}
  offer: {title: t, message: m}
- id: b
  trigger: {type: enter}
  audience: *gold
  offer: {title: t, message: m}
"""
    a, b = parse_campaign_file(text.encode(), "c.yaml").campaigns
    assert a.audience == b.audience


def test_campaign_file_model_directly_rejects_duplicates() -> None:
    with pytest.raises(ValueError, match="duplicate campaign id"):
        CampaignFile.model_validate([minimal("a"), minimal("a")])


@pytest.mark.parametrize(
    ("path", "value", "field", "reason"),
    [
        ("targeting", {"tags": ["t"] * 1_001}, "targeting.tags", "at most 1000 items"),
        ("caps", [{"count": 1, "window": "1h"}] * 21, "caps", "at most 20 items"),
        ("audience", {"include": [{"field": "tier", "op": "in", "value": ["g"] * 1_001}]},
         "audience.include[0].value", "at most 1000 values"),
        ("audience", {"include": [{"field": "tier", "op": "eq", "value": "g" * 1_001}]},
         "audience.include[0].value", "at most 1000 characters"),
    ],
)  # fmt: skip
def test_lists_and_texts_have_limits(path: str, value: Any, field: str, reason: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_campaign_file(as_json({"campaigns": [_set(minimal(), path, value)]}), "c.json")
    assert [(d["field"], reason in d["reason"]) for d in err.value.details] == [(field, True)]
