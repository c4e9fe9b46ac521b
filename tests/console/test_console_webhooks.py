"""The console's Webhooks pages through the ASGI app: the secret shown once, CSRF on every
form, marketer input escaped, and the API's own error messages on the forms."""

from __future__ import annotations

import contextlib
import html
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from service.events import log as event_log
from service.events.types import visit_event
from service.settings import Settings
from tests import webhook_receiver
from tests.console.conftest import Api, sign_in
from tests.helpers import iso
from tests.service.conftest import _make_api
from tests.webhook_receiver import always

SCRIPT_URL = "http://127.0.0.1:9/hooks?next=<script>window.pwned=1</script>"
SCRIPT_TAG = "<script>window.pwned=2</script>"


def secret_on(page: str) -> str:
    found = re.search(r'id="secret" readonly value="(whsec_[^"]+)"', page)
    assert found is not None, page
    return found.group(1)


def endpoints(api: Api) -> list[dict]:
    r = api.client.get("/v1/webhooks", headers=api.admin)
    assert r.status_code == 200
    return list(r.json()["webhooks"])


def create(api: Api, csrf: str, **form: object) -> tuple[int, str]:
    data: dict[str, object] = {"csrf": csrf, "url": "http://127.0.0.1:9/hooks", **form}
    r = api.client.post("/console/webhooks", data=data, follow_redirects=False)
    return r.status_code, r.text


def test_create_shows_the_secret_once_and_escapes_everything(any_api: Api) -> None:
    csrf = sign_in(any_api)
    page = any_api.client.get("/console/webhooks")
    assert page.status_code == 200
    assert 'href="/console/webhooks" aria-current="page">Webhooks</a>' in page.text
    assert "No endpoints yet" in page.text
    for t in ("visit.entered", "offer.redeemed", "user.erased"):  # the EventType checkboxes
        assert f'name="events" value="{t}"' in page.text

    status, body = create(
        any_api, csrf, url=SCRIPT_URL, scope="some", events=["offer.redeemed", "user.erased"],
        store_tags=f"nyc, {SCRIPT_TAG}",
    )  # fmt: skip
    assert status == 201, body
    secret = secret_on(body)
    assert "Copy the secret now" in body and "only time it is shown" in body
    assert body.count(secret) == 1
    [made] = endpoints(any_api)
    assert made["url"] == SCRIPT_URL
    assert made["events"] == ["offer.redeemed", "user.erased"]
    assert made["store_tags"] == sorted(["nyc", SCRIPT_TAG])

    pages = [
        any_api.client.get("/console/webhooks").text,
        any_api.client.get(f"/console/webhooks/{made['id']}").text,
        any_api.client.get(f"/console/webhooks/{made['id']}/delete").text,
    ]
    for text in pages:
        assert secret not in text, "the secret is shown on the result page only"
        assert "<script>window" not in text, "marketer input is escaped"
        assert "?next=&lt;script&gt;window.pwned=1&lt;/script&gt;" in text
    for text in pages[:2]:
        assert '<span class="tag">&lt;script&gt;window.pwned=2&lt;/script&gt;</span>' in text
    assert "<script>window" not in body
    assert pages[0].count('<span class="tag">offer.redeemed</span>') == 1

    # Rotation: a new secret, once, and the overlap said in words.
    r = any_api.client.post(f"/console/webhooks/{made['id']}/rotate", data={"csrf": csrf})
    assert r.status_code == 200, r.text
    rotated = secret_on(r.text)
    assert rotated != secret
    assert "two signatures" in r.text and "previous" in r.text
    detail = any_api.client.get(f"/console/webhooks/{made['id']}").text
    assert rotated not in detail and "the previous secret also signs until" in detail
    got = any_api.client.get(f"/v1/webhooks/{made['id']}", headers=any_api.admin).json()
    assert got["previous_secret_expires_at"] is not None


def test_every_webhook_form_needs_the_csrf_token(any_api: Api) -> None:
    csrf = sign_in(any_api)
    status, _ = create(any_api, csrf)
    assert status == 201
    [made] = endpoints(any_api)
    base = f"/console/webhooks/{made['id']}"
    forms: list[tuple[str, dict[str, str]]] = [
        ("/console/webhooks", {"url": "http://127.0.0.1:9/other"}),
        (f"{base}/enabled", {"enabled": "false"}),
        (f"{base}/rotate", {}),
        (f"{base}/replay", {"since": "2026-01-01T00:00"}),
        (f"{base}/delete", {}),
    ]
    for path, data in forms:
        for token in (None, "forged"):
            sent = data if token is None else {**data, "csrf": token}
            r = any_api.client.post(path, data=sent, follow_redirects=False)
            assert r.status_code == 403 and "CSRF" in r.text, (path, token, r.status_code)
        r = any_api.client.post(
            path, data={**data, "csrf": csrf}, headers={"Origin": "http://evil.example"},
            follow_redirects=False,
        )  # fmt: skip
        assert r.status_code == 403, path
    assert endpoints(any_api) == [made], "a refused request changes nothing"


def test_form_errors_are_the_apis_messages(any_api: Api) -> None:
    csrf = sign_in(any_api)
    cases = [
        ({"url": "ftp://x.example/h"}, {"url": "ftp://x.example/h"}),
        ({"url": "https://user:pw@x.example/"}, {"url": "https://user:pw@x.example/"}),
        (
            {"url": "https://x.example/h", "events": ["visit.teleported"]},
            {"url": "https://x.example/h", "scope": "some", "events": ["visit.teleported"]},
        ),
        (
            {"url": "https://x.example/h", "events": []},
            {"url": "https://x.example/h", "scope": "some"},
        ),
        (
            {"url": "https://x.example/h", "store_tags": ["x" * 129]},
            {"url": "https://x.example/h", "store_tags": "x" * 129},
        ),
    ]
    for body, form in cases:
        r = any_api.client.post("/v1/webhooks", json=body, headers=any_api.admin)
        assert r.status_code == 422, r.text
        message = r.json()["error"]["message"]
        status, page = create(any_api, csrf, **form)
        assert status == 422, (form, page)
        shown = re.search(
            r'<div class="error" role="alert" id="form-error">(.*?)</div>', page, re.S
        )
        assert shown is not None, page
        assert html.unescape(shown.group(1)) == f"<p>Please check the form:</p><p>{message}</p>"
        # The form keeps what was typed.
        assert f'value="{html.escape(str(form["url"]))}"' in page
    assert endpoints(any_api) == [], "nothing was created"
    # The field at fault is marked for assistive technology.
    _, page = create(any_api, csrf, url="ftp://x.example/h")
    assert re.search(r'id="url"[^>]*aria-invalid="true"', page, re.S)


@pytest.mark.parametrize("where", ["endpoint", "list"])
def test_disable_enable_and_delete(any_api: Api, where: str) -> None:
    csrf = sign_in(any_api)
    create(any_api, csrf)
    [made] = endpoints(any_api)
    base = f"/console/webhooks/{made['id']}"
    r = any_api.client.post(
        f"{base}/enabled", data={"csrf": csrf, "enabled": "false", "back": where},
        follow_redirects=False,
    )  # fmt: skip
    assert r.status_code == 303
    assert r.headers["location"] == (
        f"{base}?done=disabled"
        if where == "endpoint"
        else f"/console/webhooks?done=disabled&endpoint={made['id']}"
    )
    [got] = endpoints(any_api)
    assert got["enabled"] is False and got["disabled_reason"] == "disabled through the console"
    page = any_api.client.get(r.headers["location"]).text
    assert "disabled through the console" in page and "badge off" in page
    assert "The endpoint is disabled" in page or f"Endpoint {made['id']} is disabled." in page
    r = any_api.client.post(f"{base}/enabled", data={"csrf": csrf, "enabled": "true"})
    assert r.status_code == 200 and "Deliveries resume" in r.text
    assert endpoints(any_api)[0]["enabled"] is True

    confirm = any_api.client.get(f"{base}/delete")
    assert confirm.status_code == 200 and "Delete this endpoint?" in confirm.text
    assert endpoints(any_api) != [], "asking is not deleting"
    r = any_api.client.post(f"{base}/delete", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == f"/console/webhooks?done=deleted&endpoint={made['id']}"
    assert endpoints(any_api) == []
    gone = any_api.client.get(base)
    assert gone.status_code == 404 and "no webhook endpoint" in gone.text
    assert any_api.client.post(f"{base}/delete", data={"csrf": csrf}).status_code == 404


def test_deliveries_view_and_replay(any_api: Api) -> None:
    csrf = sign_in(any_api)
    create(any_api, csrf)
    [made] = endpoints(any_api)
    start = datetime.now(UTC) - timedelta(seconds=1)
    events = [
        visit_event("enter", device_id="d", user_id=None, store_id="s", ping_key=f"p{i}",
                    occurred_at=start)
        for i in range(3)
    ]  # fmt: skip
    with any_api.app_state.engine.begin() as conn:
        event_log.record(conn, events)
    any_api.client.portal.call(any_api.app_state.event_relay.fan_out)
    base = f"/console/webhooks/{made['id']}"
    page = any_api.client.get(base).text
    for e in events:
        assert f"<code>{e.id}</code>" in page
    assert page.count("<td>visit.entered</td>") == 3
    listing = any_api.client.get("/console/webhooks").text
    assert re.search(r"3 pending<div class=\"muted\">oldest \d+ s</div>", listing), listing

    # The replay form calls the API's replay: the date picker's value is read as UTC.
    picked = (start - timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%S")
    r = any_api.client.post(
        f"{base}/replay", data={"csrf": csrf, "since": picked}, follow_redirects=False
    )
    assert r.status_code == 303 and r.headers["location"] == f"{base}?done=replayed&queued=3"
    page = any_api.client.get(r.headers["location"]).text
    assert "3 deliveries queued again, under the events&#39; own ids." in page
    assert page.count('<span class="tag">replay</span>') == 3
    r = any_api.client.post(f"{base}/replay", data={"csrf": csrf, "since": iso(start)})
    assert (
        r.status_code == 200
        and "3 deliveries queued again, under the events&#39; own ids." in r.text
    ), "RFC 3339 too"
    # Older pages: the API's cursor (9 deliveries now, newest first).
    listed = any_api.client.get(
        f"/v1/webhooks/{made['id']}/deliveries", headers=any_api.admin
    ).json()["deliveries"]
    assert len(listed) == 9
    older = any_api.client.get(base, params={"cursor": listed[5]["id"]}).text
    assert older.count("<td>visit.entered</td>") == 3 and "back to the newest" in older
    # A bad time: the API's message, on the form.
    api_msg = any_api.client.post(
        f"/v1/webhooks/{made['id']}/replay", params={"since": "yesterday"}, headers=any_api.admin
    ).json()["error"]["message"]
    r = any_api.client.post(f"{base}/replay", data={"csrf": csrf, "since": "yesterday"})
    assert r.status_code == 422
    shown = re.search(r'<div class="error" role="alert" id="replay-error">(.*?)</div>', r.text)
    assert shown is not None and html.unescape(shown.group(1)) == api_msg


def test_webhook_pages_need_a_session(any_api: Api) -> None:
    r = any_api.client.get("/console/webhooks", follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == "/console/sign-in?next=/console/webhooks"
    r = any_api.client.post("/console/webhooks", data={"url": "https://x.example"},
                            follow_redirects=False)  # fmt: skip
    assert r.status_code == 303 and r.headers["location"].startswith("/console/sign-in")
    assert endpoints(any_api) == []


def test_an_endpoint_that_answered_410_shows_why_it_is_disabled(tmp_path: Path) -> None:
    """The list says why an endpoint stopped (410 here), and what its last delivery got."""
    settings = Settings(data_dir=tmp_path / "data", events_poll_s=0.1, log_level="WARNING")
    serving = contextlib.contextmanager(webhook_receiver.serve)
    app = contextlib.contextmanager(_make_api)
    with serving() as receiver, app(settings) as api:
        csrf = sign_in(api)
        url = receiver.on("/gone", always(410))
        assert create(api, csrf, url=url)[0] == 201
        [made] = endpoints(api)
        with api.app_state.engine.begin() as conn:
            event_log.record(conn, [visit_event(
                "enter", device_id="d", user_id=None, store_id="s", ping_key="p",
                occurred_at=datetime.now(UTC),
            )])  # fmt: skip
        deadline = time.monotonic() + 20
        while endpoints(api)[0]["enabled"]:
            assert time.monotonic() < deadline, "the 410 did not disable the endpoint"
            time.sleep(0.1)
        assert receiver.at("/gone"), "the receiver was asked"
        page = api.client.get("/console/webhooks").text
        row = page[page.index(made["id"]) :]
        assert '<span class="badge off">disabled</span>' in row
        assert "410 Gone: the endpoint asked to be disabled" in row
        assert re.search(r'<span class="dstatus failed">failed</span>\s*· HTTP 410', row)


def test_rotation_without_an_overlap_says_the_old_secret_stopped(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", webhook_secret_overlap_s=0, log_level="WARNING")
    with contextlib.contextmanager(_make_api)(settings) as api:
        csrf = sign_in(api)
        create(api, csrf)
        [made] = endpoints(api)
        r = api.client.post(f"/console/webhooks/{made['id']}/rotate", data={"csrf": csrf})
        assert r.status_code == 200 and secret_on(r.text)
        assert "The previous secret no longer signs" in r.text and "two signatures" not in r.text
