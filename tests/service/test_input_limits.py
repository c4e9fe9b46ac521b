"""Bad input is a 422 naming the field, before PostgreSQL sees it; the limits are documented.

The fuzzer of issue 12 found 500s for NUL bytes and ``\\u0000`` (PostgreSQL refuses NUL in
text and ``\\u0000`` in jsonb) in events, redemptions and paths. Each case here was one.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.helpers import ago, iso
from tests.service.conftest import Api


def _event(**extra: Any) -> dict[str, Any]:
    return {"type": "purchase", "occurred_at": iso(ago(60))} | extra


def _reasons(r: Any) -> dict[str, str]:
    return {d["field"]: d["reason"] for d in r.json()["error"]["details"]}


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        (_event(properties={"note": "a\u0000b"}), "body.properties",
         "note: must not contain control characters (found U+0000)"),
        (_event(properties={"items": [{"sku": "x\u0000"}]}), "body.properties",
         "items[0].sku: must not contain control characters (found U+0000)"),
        (_event(store_id="s\u0000"), "body.store_id", "must not contain control characters"),
        (_event(event_id="e\u009c"), "body.event_id", "must not contain control characters"),
        (_event(properties={"n": "x" * 1_001}), "body.properties", "n: at most 1000 characters"),
        (_event(properties={f"k{i}": i for i in range(51)}), "body.properties", "at most 50 keys"),
        (_event(properties={"a": {"b": {"c": {"d": 1}}}}), "body.properties",
         "a.b.c: must be a string, number, boolean or null"),
        (_event(properties={"big": 2**60}), "body.properties",
         "big: numbers are between -9007199254740991 and 9007199254740991"),
    ],
)  # fmt: skip
def test_event_input_is_a_422_naming_the_field(
    api: Api, body: dict[str, Any], field: str, reason: str
) -> None:
    r = api.client.post("/v1/users/u1/events", json=body, headers=api.server)
    assert r.status_code == 422, r.text
    assert _reasons(r)[field] == reason
    assert (
        api.client.post("/v1/users/u1/events", json=_event(), headers=api.server).status_code == 201
    )


@pytest.mark.parametrize(
    ("patch", "field", "reason"),
    [
        ({"nickname": "a\u0000"}, "body", "nickname: must not contain control characters (found U+0000)"),
        ({"tags": ["ok", "x" * 1_001]}, "body", "tags[1]: at most 1000 characters"),
        ({"address": {"city": "Paris"}}, "body", "address: must be a string, number, boolean or null, or a list of those"),
        ({f"a{i}": 1 for i in range(101)}, "body", "at most 100 keys"),
        ({}, "body", "send at least 1 key(s)"),
        ({"bad key": 1}, "body", "bad key: keys match ^[A-Za-z_][A-Za-z0-9_.-]*$ and have at most 64 characters"),
        ({"location_consent": "no"}, "body", "location_consent must be bool"),
    ],
)  # fmt: skip
def test_attribute_input_is_a_422_naming_the_field(
    api: Api, patch: dict[str, Any], field: str, reason: str
) -> None:
    r = api.client.patch("/v1/users/u1", json=patch, headers=api.server)
    assert r.status_code == 422, r.text
    assert _reasons(r)[field] == reason


@pytest.mark.parametrize(
    ("body", "headers", "field"),
    [
        ({"coupon_code": "C\u0000"}, {}, "body.coupon_code"),
        ({"coupon_code": "C", "store_id": "s\u0000"}, {}, "body.store_id"),
        ({"coupon_code": "C", "user_id": "u\u0007"}, {}, "body.user_id"),
        ({"coupon_code": "C", "amount": 1e300}, {}, "body.amount"),
        ({"coupon_code": "C"}, {"Idempotency-Key": "k\x7f"}, "header.idempotency-key"),
    ],
)
def test_redemption_input_is_a_422_naming_the_field(
    api: Api, body: dict[str, Any], headers: dict[str, str], field: str
) -> None:
    r = api.client.post("/v1/redemptions", json=body, headers={**api.server, **headers})
    assert r.status_code == 422, r.text
    assert field in _reasons(r)


@pytest.mark.parametrize(
    ("method", "path", "field"),
    [
        ("PATCH", "/v1/users/u%00x", "path.user_id"),
        ("DELETE", "/v1/users/u%00x", "path.user_id"),
        ("GET", "/v1/users/u%00x/erasure", "path.user_id"),
        ("POST", "/v1/users/u%C2%9C/events", "path.user_id"),
        ("GET", "/v1/campaigns/c%00", "path.campaign_id"),
        ("GET", "/v1/campaigns/c%00/report", "path.campaign_id"),
        ("GET", "/v1/campaigns/" + "c" * 65, "path.campaign_id"),
    ],
)
def test_control_characters_in_paths_are_a_422(
    api: Api, method: str, path: str, field: str
) -> None:
    body = {"a": 1} if method == "PATCH" else _event() if method == "POST" else None
    r = api.client.request(method, path, json=body, headers=api.admin)
    assert r.status_code == 422, r.text
    assert field in _reasons(r)


def test_json_bodies_are_read_as_json_whatever_the_content_type(api: Api) -> None:
    # `curl -d` sends application/x-www-form-urlencoded; some clients send nothing or text.
    body = json.dumps({"first_name": "Ada"}).encode()
    for content_type in ("application/x-www-form-urlencoded", "text/plain", None):
        headers = {**api.server} | ({"Content-Type": content_type} if content_type else {})
        r = api.client.patch("/v1/users/ct", content=body, headers=headers)
        assert r.status_code == 200, (content_type, r.text)
        assert r.json()["attributes"] == {"first_name": "Ada"}
    r = api.client.post(
        "/v1/users/ct/events",
        content=json.dumps(_event()).encode(),
        headers={**api.server, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 201, r.text
    r = api.client.patch(
        "/v1/campaigns/none", content=b'{"status": "paused"}', headers={**api.admin}
    )
    assert r.status_code == 404, r.text  # parsed: the campaign is what is missing
    bad = api.client.patch(
        "/v1/users/ct", content=b"first_name=Ada", headers={**api.server, "Content-Type": "application/x-www-form-urlencoded"}
    )  # fmt: skip
    assert bad.status_code == 422 and "JSON" in bad.text


def test_a_forbidden_route_names_the_key_it_needs(api: Api) -> None:
    r = api.client.get("/v1/campaigns", headers=api.server)
    assert r.status_code == 403
    assert r.json()["error"]["message"] == (
        "this route needs an admin key; this key has role server"
    )
    r = api.client.patch("/v1/users/u1", json={"a": 1}, headers=api.sdk)
    assert r.json()["error"]["message"] == (
        "this route needs an admin or a server key; this key has role sdk"
    )


def test_the_openapi_document_states_the_enforced_limits(api: Api) -> None:
    doc = api.client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    code = schemas["RedemptionIn"]["properties"]["coupon_code"]
    assert code["maxLength"] == 96 and code["pattern"] == r"^[^\x00-\x1f\x7f-\x9f]*$"
    props = schemas["UserEventIn"]["properties"]["properties"]
    assert props["maxProperties"] == 50 and props["propertyNames"]["maxLength"] == 64
    params = doc["paths"]["/v1/users/{user_id}"]["patch"]["parameters"]
    [user_id] = [p for p in params if p["name"] == "user_id"]
    assert user_id["schema"]["maxLength"] == 128 and "pattern" in user_id["schema"]
    body = doc["paths"]["/v1/users/{user_id}"]["patch"]["requestBody"]["content"]
    attrs = body["application/json"]["schema"]
    attrs = schemas[attrs["$ref"].rsplit("/", 1)[-1]] if "$ref" in attrs else attrs
    assert attrs["maxProperties"] == 100 and attrs["minProperties"] == 1


def _ping(**extra: Any) -> dict[str, Any]:
    return {
        "device_id": "d",
        "lat": 1.0,
        "lng": 1.0,
        "accuracy_m": 5,
        "timestamp": iso(ago(1)),
    } | extra


@pytest.mark.parametrize(
    ("path", "body", "params", "field"),
    [
        # the fuzzer's finds: lax pydantic read false as 0.0 and 0 as 1970-01-01
        ("/v1/locations", _ping(speed_mps=False), {}, "body.speed_mps"),
        ("/v1/locations", _ping(lat="1.0"), {}, "body.lat"),
        ("/v1/locations/batch", {"pings": [_ping(accuracy_m=True)]}, {}, "body.pings.0.accuracy_m"),
        ("/v1/locations", _ping(), {"explain": "null"}, "query.explain"),
    ],
)  # fmt: skip
def test_pings_take_the_documented_types_only(
    api: Api, path: str, body: dict[str, Any], params: dict[str, str], field: str
) -> None:
    r = api.client.post(path, json=body, params=params, headers=api.admin)
    assert r.status_code == 422, r.text
    assert field in _reasons(r)


def test_schema_types_are_enforced_on_events_and_redemptions(api: Api) -> None:
    r = api.client.post("/v1/users/u1/events", json=_event(occurred_at=0), headers=api.server)
    assert r.status_code == 422 and "body.occurred_at" in _reasons(r), r.text
    r = api.client.post(
        "/v1/redemptions", json={"coupon_code": "C", "amount": True}, headers=api.server
    )
    assert r.status_code == 422 and "body.amount" in _reasons(r), r.text


def test_a_body_that_is_not_utf8_is_a_422(api: Api) -> None:
    r = api.client.patch("/v1/users/u1", content=b'{"a": "\xff\xfe"}', headers=api.server)
    assert r.status_code == 422, r.text
    assert _reasons(r) == {"body": "the body could not be read as JSON (is it UTF-8?)"}


def test_a_405_lists_every_method_of_the_path(api: Api) -> None:
    r = api.client.request("OPTIONS", "/v1/users/u1", headers=api.admin)
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    assert r.headers["allow"] == "DELETE, PATCH"
    r = api.client.request("PUT", "/v1/geofences/s1", headers=api.admin)
    assert r.headers["allow"] == "DELETE, GET"
    r = api.client.request("OPTIONS", "/v1/campaigns/import", headers=api.admin)
    assert r.headers["allow"] == "POST"
