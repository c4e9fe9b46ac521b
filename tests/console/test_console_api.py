"""Console sign-in, sessions, CSRF, escaping and staged imports, through the ASGI app."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from service.app import create_app
from service.auth import Role, create_key, revoke_key
from service.reasons import EXPLAINED, Reason
from service.settings import Settings
from tests.console.conftest import Api, admin_key, csrf_of, sign_in, sign_in_form
from tests.helpers import ago, iso
from tests.service.conftest import _make_api

MARKUP_NAME = '<img src=x onerror="window.pwned=1">Evil & Co'
CAMPAIGNS = b"""
campaigns:
  - id: welcome
    name: <script>window.pwned=2</script>Welcome
    trigger: {type: enter}
    offer:
      title: <b onmouseover="window.pwned=3">Treat</b>
      message: "Hi <svg onload=window.pwned=4>"
"""


def import_file(api: Api, kind: str, name: str, body: bytes) -> None:
    r = api.client.post(f"/v1/{kind}/import", files={"file": (name, body)}, headers=api.admin)
    assert r.status_code == 200, r.text


def post_sign_in(client: TestClient, key: str, token: str | None = None):
    token = sign_in_form(client) if token is None else token
    return client.post("/console/sign-in", data={"key": key, "csrf": token}, follow_redirects=False)


def test_pages_redirect_to_sign_in_and_back(any_api: Api) -> None:
    r = any_api.client.get("/console/campaigns", follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == "/console/sign-in?next=/console/campaigns"
    token = sign_in_form(any_api.client)
    r = any_api.client.post(
        "/console/sign-in",
        data={"key": admin_key(any_api), "csrf": token, "next": "/console/campaigns"},
        follow_redirects=False,
    )
    assert r.headers["location"] == "/console/campaigns"
    # Never off to another site after signing in.
    token = sign_in_form(any_api.client)
    r = any_api.client.post(
        "/console/sign-in",
        data={"key": admin_key(any_api), "csrf": token, "next": "//evil.example/x"},
        follow_redirects=False,
    )
    assert r.headers["location"] == "/console/stores"


@pytest.mark.parametrize(
    ("which", "status", "words"),
    [
        ("wrong", 401, "not known"),
        ("sdk", 403, "this is an sdk key; the console needs an admin key"),
        ("server", 403, "this is a server key; the console needs an admin key"),
        ("empty", 401, "enter your admin key"),
    ],
)
def test_wrong_or_non_admin_key_gets_a_message_and_no_session(
    any_api: Api, which: str, status: int, words: str
) -> None:
    key = {
        "wrong": "go_admin_" + "x" * 43,
        "sdk": any_api.sdk["Authorization"].removeprefix("Bearer "),
        "server": any_api.server["Authorization"].removeprefix("Bearer "),
        "empty": "",
    }[which]
    r = post_sign_in(any_api.client, key)
    assert r.status_code == status
    assert words in r.text
    assert "go_console=" not in r.headers.get("set-cookie", "")
    with any_api.app_state.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM console_sessions")).scalar_one() == 0
    assert any_api.client.get("/console/stores", follow_redirects=False).status_code == 303


def test_sign_in_form_needs_its_token(any_api: Api) -> None:
    sign_in_form(any_api.client)
    r = post_sign_in(any_api.client, admin_key(any_api), token="forged")
    assert r.status_code == 403 and "expired" in r.text


def test_cookie_flags_and_only_a_hash_is_stored(any_api: Api) -> None:
    r = post_sign_in(any_api.client, admin_key(any_api))
    cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith("go_console="))
    flags = {p.strip().split("=")[0].lower(): p.strip() for p in cookie.split(";")}
    assert "httponly" in flags
    assert flags["samesite"].lower() == "samesite=strict"
    assert flags["path"] == "Path=/console"
    assert flags["max-age"] == f"Max-Age={int(any_api.settings.console_session_ttl_s)}"
    assert "secure" not in flags, "plain http on localhost: no Secure flag"
    session_id = cookie.split(";")[0].split("=", 1)[1]
    with any_api.app_state.engine.connect() as conn:
        rows = conn.execute(text("SELECT id_hash, key_id FROM console_sessions")).all()
    assert [r.id_hash for r in rows] == [hashlib.sha256(session_id.encode()).hexdigest()]


def test_secure_cookie_over_https(embedded_api: Api) -> None:
    client = TestClient(embedded_api.client.app, base_url="https://testserver")
    r = post_sign_in(client, admin_key(embedded_api))
    cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith("go_console="))
    assert "secure" in cookie.lower().split("; ")


def test_sign_out_ends_the_session_on_the_server(any_api: Api) -> None:
    csrf = sign_in(any_api)
    session_id = any_api.client.cookies["go_console"]
    r = any_api.client.post("/console/sign-out", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/console/sign-in?signed_out=1"
    with any_api.app_state.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM console_sessions")).scalar_one() == 0
    # The old cookie, replayed, opens nothing.
    other = TestClient(any_api.client.app, cookies={"go_console": session_id})
    assert other.get("/console/stores", follow_redirects=False).status_code == 303


@pytest.fixture(params=["postgis", "embedded"])
def short_api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Api]:
    """Both backends, with 1 s console sessions and no key or session caching."""
    if request.param == "postgis":
        base = request.getfixturevalue("pg_settings")
    else:
        base = Settings(data_dir=tmp_path / "data")
    yield from _make_api(base.model_copy(update={"console_session_ttl_s": 1.0, "key_cache_s": 0.0}))


def test_sessions_expire_and_end_with_their_key(short_api: Api) -> None:
    sign_in(short_api)
    assert short_api.client.get("/console/stores", follow_redirects=False).status_code == 200
    time.sleep(1.1)
    r = short_api.client.get("/console/stores", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/console/sign-in")
    sign_in(short_api)
    engine = short_api.app_state.engine
    with engine.connect() as conn:
        key_id = (
            conn.execute(text("SELECT key_id FROM console_sessions ORDER BY created_at DESC"))
            .scalars()
            .first()
        )
    assert revoke_key(engine, key_id)
    assert short_api.client.get("/console/stores", follow_redirects=False).status_code == 303


def test_state_changes_need_the_csrf_token(any_api: Api) -> None:
    import_file(any_api, "campaigns", "c.yaml", CAMPAIGNS)
    csrf = sign_in(any_api)
    client = any_api.client
    for data in ({"status": "paused"}, {"status": "paused", "csrf": "wrong"}):
        r = client.post("/console/campaigns/welcome/status", data=data, follow_redirects=False)
        assert r.status_code == 403, data
        assert "CSRF" in r.text
    status = client.get("/v1/campaigns/welcome", headers=any_api.admin).json()["status"]
    assert status == "active", "a refused request changes nothing"
    # JSON API: the token travels in a header.
    r = client.post(
        "/console/api/uploads", json={"kind": "geofences", "filename": "a.csv", "size": 5}
    )
    assert r.status_code == 403
    # Another origin is refused even with the token.
    r = client.post(
        "/console/campaigns/welcome/status",
        data={"status": "paused", "csrf": csrf},
        headers={"Origin": "http://evil.example"},
        follow_redirects=False,
    )
    assert r.status_code == 403
    r = client.post(
        "/console/campaigns/welcome/status", data={"status": "paused", "csrf": csrf},
        follow_redirects=False,
    )  # fmt: skip
    assert r.status_code == 303
    assert client.get("/v1/campaigns/welcome", headers=any_api.admin).json()["status"] == "paused"


def test_marketer_markup_is_escaped_everywhere(any_api: Api) -> None:
    body = f'store_id,name,lat,lng,radius_m,tags\nevil,"{MARKUP_NAME.replace(chr(34), chr(34) * 2)}",40.7,-73.9,50,<i>tag</i>\n'
    import_file(any_api, "geofences", "s.csv", body.encode())
    import_file(any_api, "campaigns", "c.yaml", CAMPAIGNS)
    sign_in(any_api)
    pages = [
        any_api.client.get(p).text
        for p in ("/console/stores", "/console/campaigns", "/console/campaigns/welcome")
    ]
    html = "\n".join(pages)
    for raw in ("<img src=x", "<script>window", "<b onmouseover", "<svg onload", "<i>tag</i>"):
        assert raw not in html, raw
    assert "&lt;script&gt;window.pwned=2&lt;/script&gt;Welcome" in html
    assert "&lt;i&gt;tag&lt;/i&gt;" in html  # the tag filter's option
    # Every page forbids inline script.
    r = any_api.client.get("/console/stores")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp


def test_console_can_be_turned_off(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, console=False)
    with TestClient(create_app(settings)) as client:
        assert client.get("/console/sign-in").status_code == 404
        assert client.get("/healthz").status_code == 200


def test_import_in_chunks_check_then_apply(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, max_body_bytes=80_000, log_level="WARNING")
    app = create_app(settings)
    with TestClient(app) as client:
        key = create_key(app.state.engine, Role.admin)
        token = sign_in_form(client)
        client.post("/console/sign-in", data={"key": key, "csrf": token})
        h = {"X-CSRF-Token": csrf_of(client.get("/console/imports").text)}
        rows = [
            f"s{i:05d},Store {i},{40 + i * 1e-4:.5f},{-74 + i * 1e-4:.5f},50" for i in range(5000)
        ]
        rows[1234] = "s01234,Bad,40.1,-74.1,5"  # radius below 10 m
        body = ("store_id,name,lat,lng,radius_m\n" + "\n".join(rows) + "\n").encode()
        r = client.post(
            "/console/api/uploads",
            json={"kind": "geofences", "filename": "s.csv", "size": len(body)},
            headers=h,
        )
        assert r.status_code == 200, r.text
        up = r.json()
        size = up["chunk_bytes"]
        assert size < 80_000 and len(body) > 2 * size
        parts = [body[i : i + size] for i in range(0, len(body), size)]
        # Incomplete: refused with a clear message, nothing written.
        r = client.post(f"/console/api/uploads/{up['id']}/check", json={}, headers=h)
        assert r.status_code == 422 and "incomplete" in r.json()["error"]["message"]
        for seq in reversed(range(len(parts))):  # any order; a retried chunk replaces itself
            assert (
                client.put(
                    f"/console/api/uploads/{up['id']}/chunks/{seq}", content=parts[seq], headers=h
                ).status_code
                == 200
            )
        assert client.put(
            f"/console/api/uploads/{up['id']}/chunks/0", content=parts[0], headers=h
        ).json()["received"] == len(body)
        r = client.put(f"/console/api/uploads/{up['id']}/chunks/99", content=b"x", headers=h)
        assert r.status_code == 422
        check = client.post(
            f"/console/api/uploads/{up['id']}/check", json={"mode": "upsert"}, headers=h
        ).json()
        assert (check["created"], check["skipped"], check["applied"]) == (4999, 1, False)
        assert check["errors"] == [
            {
                "line": 1236,
                "store_id": "s01234",
                "field": "radius_m",
                "reason": "radius 5 m is outside 10 m..10 km",
            }
        ]
        assert app.state.index_holder.index is not None and len(app.state.index_holder.index) == 0
        # All or nothing by default: the bad row stops the apply, nothing is written.
        r = client.post(
            f"/console/api/uploads/{up['id']}/apply", json={"on_error": "abort"}, headers=h
        )
        assert r.status_code == 422 and r.json()["error"]["details"][0]["line"] == 1236
        assert len(app.state.index_holder.index) == 0
        r = client.post(
            f"/console/api/uploads/{up['id']}/apply", json={"on_error": "skip"}, headers=h
        )
        assert r.status_code == 200, r.text
        assert (r.json()["created"], r.json()["applied"]) == (4999, True)
        assert len(app.state.index_holder.index) == 4999, "applied fences are served at once"
        # Applied uploads are gone.
        assert (
            client.post(f"/console/api/uploads/{up['id']}/check", json={}, headers=h).status_code
            == 404
        )


def test_uploads_belong_to_their_session(any_api: Api) -> None:
    csrf = sign_in(any_api)
    h = {"X-CSRF-Token": csrf}
    up = any_api.client.post(
        "/console/api/uploads",
        json={"kind": "campaigns", "filename": "c.yaml", "size": len(CAMPAIGNS)},
        headers=h,
    ).json()
    any_api.client.put(f"/console/api/uploads/{up['id']}/chunks/0", content=CAMPAIGNS, headers=h)
    other = TestClient(any_api.client.app)
    token = sign_in_form(other)
    other.post("/console/sign-in", data={"key": admin_key(any_api), "csrf": token})
    h2 = {"X-CSRF-Token": csrf_of(other.get("/console/imports").text)}
    assert (
        other.post(f"/console/api/uploads/{up['id']}/check", json={}, headers=h2).status_code == 404
    )
    r = any_api.client.post(f"/console/api/uploads/{up['id']}/apply", json={}, headers=h)
    assert r.status_code == 200 and r.json()["created"] == 1


def test_campaign_file_errors_come_as_rows(any_api: Api) -> None:
    csrf = sign_in(any_api)
    h = {"X-CSRF-Token": csrf}
    bad = b"campaigns:\n  - id: x\n    trigger: {type: enter}\n    colour: red\n    offer: {title: T, message: M}\n"
    up = any_api.client.post(
        "/console/api/uploads",
        json={"kind": "campaigns", "filename": "c.yaml", "size": len(bad)},
        headers=h,
    ).json()
    any_api.client.put(f"/console/api/uploads/{up['id']}/chunks/0", content=bad, headers=h)
    r = any_api.client.post(f"/console/api/uploads/{up['id']}/check", json={}, headers=h)
    assert r.status_code == 422
    details = r.json()["error"]["details"]
    assert (
        details[0]["campaign"] == "x"
        and details[0]["field"] == "colour"
        and details[0]["line"] == 4
    )


def test_a_running_check_reports_its_progress(tmp_path: Path) -> None:
    """The page polls /progress while a large file is checked: bytes read so far."""
    import threading

    settings = Settings(data_dir=tmp_path, log_level="WARNING")
    app = create_app(settings)
    with TestClient(app) as client:
        key = create_key(app.state.engine, Role.admin)
        client.post("/console/sign-in", data={"key": key, "csrf": sign_in_form(client)})
        h = {"X-CSRF-Token": csrf_of(client.get("/console/imports").text)}
        rows = [
            f"p{i:06d},Store {i},{40 + i * 1e-5:.5f},{-74 + i * 1e-5:.5f},50" for i in range(40_000)
        ]
        body = ("store_id,name,lat,lng,radius_m\n" + "\n".join(rows) + "\n").encode()
        up = client.post(
            "/console/api/uploads",
            json={"kind": "geofences", "filename": "big.csv", "size": len(body)},
            headers=h,
        ).json()
        size = up["chunk_bytes"]
        for seq, start in enumerate(range(0, len(body), size)):
            client.put(
                f"/console/api/uploads/{up['id']}/chunks/{seq}",
                content=body[start : start + size],
                headers=h,
            )
        assert client.get(f"/console/api/uploads/{up['id']}/progress").json() == {
            "done": 0,
            "size": len(body),
        }
        seen: list[int] = []
        result: dict[str, object] = {}

        def check() -> None:
            r = client.post(f"/console/api/uploads/{up['id']}/check", json={}, headers=h)
            result.update(r.json())

        worker = threading.Thread(target=check)
        worker.start()
        started = time.perf_counter()
        while worker.is_alive():
            seen.append(client.get(f"/console/api/uploads/{up['id']}/progress").json()["done"])
            time.sleep(0.01)
        worker.join()
        waited = time.perf_counter() - started
        assert result["created"] == 40_000
        assert any(0 < d <= len(body) for d in seen), (seen[:20], waited, result["seconds"])
        moving = [d for d in seen if d]  # 0 again once the check is over (SQLite: no copy)
        assert moving == sorted(moving), "progress only moves forward"


def test_why_page_explains_a_suspected_spoofing(any_api: Api) -> None:
    stores = b"store_id,name,lat,lng,radius_m\nfl,Flatiron,40.74172,-73.98964,50\n"
    import_file(any_api, "geofences", "s.csv", stores)
    import_file(any_api, "campaigns", "c.yaml", CAMPAIGNS)
    # The device was in Los Angeles a minute ago: New York now is an impossible jump.
    ping = {"device_id": "jumper", "lat": 34.0522, "lng": -118.2437, "accuracy_m": 5,
            "timestamp": iso(ago(60))}  # fmt: skip
    r = any_api.client.post("/v1/locations", json=ping, headers=any_api.sdk)
    assert r.status_code == 200, r.text
    csrf = sign_in(any_api)
    form = {"csrf": csrf, "device_id": "jumper", "lat": "40.74172", "lng": "-73.98964"}
    r = any_api.client.post("/console/why", data=form)
    assert r.status_code == 200, r.text
    step, name, words = EXPLAINED[Reason.SUSPECTED_SPOOFING]
    assert f'<span class="reason ">{Reason.SUSPECTED_SPOOFING}</span>' in r.text
    assert f'{words.capitalize()} <span class="muted">(step {step}: {name})</span>.' in r.text
    row = r.text[r.text.index("<code>suspected_spoofing</code>") :].split("</tr>")[0]
    assert "impossible_travel" in row and words in row
