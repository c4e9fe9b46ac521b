"""A marketer's journeys through the console, end to end: Debian's Chromium (Playwright)
against a real ``geo-offers serve`` on PostGIS + Redis, offline — every request to another
host is aborted and fails the test — with a screenshot of each page kept in
``tests/console/artifacts/`` (git-ignored)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
import redis
from playwright.sync_api import Browser, Locator, Page, expect

from service.auth import Role, create_key
from service.db.engine import make_engine
from service.settings import Settings
from tests import webhook_receiver
from tests.console.browser import browser, map_ready, offline_context, sign_in, watch_console
from tests.helpers import ago, iso
from tests.service.conftest import _reset_postgis
from tests.webhook_receiver import Receiver, ok

BIN = Path(sys.executable).parent / "geo-offers"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
N_STORES = 10_000
MARKUP = '<img src=x onerror="window.pwned=1">Evil & Co'
FLATIRON = (40.74172, -73.98964)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, url: str, keys: dict[Role, str]) -> None:
        self.url = url
        self.keys = keys

    def headers(self, role: Role) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[role]}"}


def _stores_csv() -> bytes:
    rows = ["store_id,name,lat,lng,radius_m,tags,timezone"]
    for i in range(N_STORES):  # a grid over the US, 10 k stores
        lat, lng = 30 + (i // 100) * 0.15, -120 + (i % 100) * 0.5
        tags = "chain;west" if lng < -100 else "chain;east"
        rows.append(f"st-{i:05d},Store {i:05d},{lat:.4f},{lng:.4f},80,{tags},America/Chicago")
    rows.append(f"nyc-flatiron,Flatiron Coffee,{FLATIRON[0]},{FLATIRON[1]},50,downtown;nyc,")
    rows.append(f'evil,"{MARKUP.replace(chr(34), chr(34) * 2)}",40.7500,-73.9800,60,<b>bold</b>,')
    return ("\n".join(rows) + "\n").encode()


CAMPAIGNS = b"""
campaigns:
  - id: welcome
    name: Welcome treat
    trigger: {type: enter}
    caps: [{count: 1, window: 7d}]
    offer:
      title: A treat on us
      message: "Hi {{ first_name | default: 'there' }}, welcome to {{ store.name }}."
      coupon: {type: unique, prefix: WELCOME-}
  - id: latte-gold
    name: <script>window.pwned=2</script>Gold latte
    priority: 5
    trigger: {type: enter}
    targeting: {tags: [downtown]}
    audience:
      include: [{field: loyalty_tier, op: in, value: [gold]}]
    offer:
      title: <b onmouseover="window.pwned=3">20% off</b>
      message: "<svg onload=window.pwned=4>"
  - id: winback
    name: We miss you
    trigger: {type: dwell, dwell_s: 120}
    offer: {title: Next one is on us, message: Hello}
"""


@pytest.fixture(scope="module")
def server(
    migrated_postgis: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    _reset_postgis(migrated_postgis)
    with psycopg.connect(migrated_postgis, autocommit=True) as conn:
        conn.execute(
            "TRUNCATE console_sessions, console_uploads, console_upload_chunks, "
            "console_fence_cells, console_fence_cell_versions"
        )
    prefix = f"geotest-console-{uuid.uuid4().hex[:8]}"
    engine = make_engine(Settings(database_url=migrated_postgis))
    keys = {role: create_key(engine, role, "journeys") for role in Role}
    engine.dispose()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEO_OFFERS_")}
    env.update(
        GEO_OFFERS_DATABASE_URL=migrated_postgis,
        GEO_OFFERS_REDIS_URL=redis_url,
        GEO_OFFERS_REDIS_PREFIX=prefix,
        GEO_OFFERS_INDEX_POLL_S="0.5",
        GEO_OFFERS_LOG_LEVEL="WARNING",
    )
    port = _free_port()
    log_path = tmp_path_factory.mktemp("console-server") / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(BIN), "serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        srv = Server(url, keys)
        admin = srv.headers(Role.admin)
        for kind, name, body in (
            ("geofences", "stores.csv", _stores_csv()),
            ("campaigns", "campaigns.yaml", CAMPAIGNS),
        ):
            r = httpx.post(
                f"{url}/v1/{kind}/import", files={"file": (name, body)}, headers=admin, timeout=120
            )
            assert r.status_code == 200, r.text
        yield srv
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        client = redis.Redis.from_url(redis_url)
        keys_left = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys_left:
            client.delete(*keys_left)
        client.close()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    with browser() as b:
        yield b


@pytest.fixture
def page(chromium: Browser, server: Server, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A fresh, offline browser context; fails the test on any request to another host,
    any script error, or any Content-Security-Policy violation (logged as console errors)."""
    ctx, guard = offline_context(chromium, server.url)
    pg = ctx.new_page()
    watch_console(pg, guard)
    pg.set_default_timeout(20_000)
    yield pg
    ARTIFACTS.mkdir(exist_ok=True)
    name = re.sub(r"[^\w.-]+", "_", request.node.name)
    pg.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)
    ctx.close()
    assert guard.blocked == [], f"requests to other hosts: {guard.blocked}"
    unexpected = [e for e in guard.console_errors if "status of 4" not in e]
    assert unexpected == [], f"errors in the page: {unexpected}"


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)


def test_sign_in_refuses_wrong_and_sdk_keys(page: Page, server: Server) -> None:
    page.goto(f"{server.url}/console/")
    expect(page).to_have_url(re.compile(r"/console/sign-in"))
    expect(page.get_by_role("heading", name="Sign in to the console")).to_be_visible()
    page.fill("#key", "go_admin_not-a-real-key-at-all-000000000000000")
    page.click("button[type=submit]")
    expect(page.get_by_role("alert")).to_contain_text("not known")
    shot(page, "sign-in-wrong-key")
    page.fill("#key", server.keys[Role.sdk])
    page.click("button[type=submit]")
    expect(page.get_by_role("alert")).to_contain_text(
        "this is an sdk key; the console needs an admin key"
    )
    assert not [c for c in page.context.cookies() if c["name"] == "go_console"]
    page.fill("#key", server.keys[Role.admin])
    page.keyboard.press("Enter")  # the form works from the keyboard
    expect(page).to_have_url(f"{server.url}/console/stores")
    expect(page.get_by_role("heading", name="Stores")).to_be_visible()


def test_find_a_store_among_many_on_the_map(page: Page, server: Server) -> None:
    sign_in(page, server.url, server.keys[Role.admin])
    expect(page.locator("#fence-count")).to_have_text(f"{N_STORES + 2:,} store fences")
    map_ready(page)
    # Zoomed out, every store is counted in a cluster drawn from the vector tiles.
    counted = page.evaluate(
        "() => window.consoleMap.queryRenderedFeatures({layers: ['clusters']})"
        ".reduce((n, f) => n + f.properties.count, 0)"
    )
    assert counted >= N_STORES * 0.9, counted
    page.fill("#search", "Store 04321")
    page.keyboard.press("Enter")
    expect(page.locator("#details")).to_be_visible()
    expect(page.locator("#d-name")).to_have_text("Store 04321")
    expect(page.locator("#d-id")).to_have_text("st-04321")
    expect(page.locator("#d-shape")).to_have_text("circle, radius 80 m")
    expect(page.locator("#d-tz")).to_have_text("America/Chicago")
    expect(page.locator("#d-campaigns")).to_contain_text("Welcome treat")
    expect(page.locator("#d-campaigns")).not_to_contain_text("Gold latte")  # targets downtown
    page.wait_for_function(
        "() => !window.consoleMap.isMoving() && window.consoleMap.getZoom() > 15"
    )
    map_ready(page)
    drawn = page.evaluate(
        "() => window.consoleMap.queryRenderedFeatures({layers: ['selected-line', 'selected-point']})"
        ".map(f => f.properties.store_id)"
    )
    assert "st-04321" in drawn, "the store is drawn, highlighted, at its true radius"
    shot(page, "stores-found")
    # Filter by tag: the tiles are asked for with the tag.
    page.select_option("#tag", "downtown")
    page.wait_for_function(
        "() => window.consoleMap.getSource('fences').tiles[0].includes('tag=downtown')"
    )


def test_import_a_file_with_errors_then_without(page: Page, server: Server) -> None:
    sign_in(page, server.url, server.keys[Role.admin])
    page.click("nav >> text=Imports")
    expect(page.get_by_role("heading", name="Import a file")).to_be_visible()
    bad = (
        b"store_id,name,lat,lng,radius_m\n"
        b"imp-1,New One,41.0,-73.5,50\n"
        b"imp-2,Swapped,-73.5,41.0,50\n"
        b"imp-3,Tiny,41.1,-73.6,3\n"
    )
    page.set_input_files(
        "#file", files=[{"name": "new.csv", "mimeType": "text/csv", "buffer": bad}]
    )
    expect(page.locator("#result-title")).to_have_text("Check of new.csv (nothing written yet)")
    expect(page.locator("#n-created")).to_have_text("1")
    expect(page.locator("#n-errors")).to_have_text("2")
    rows = page.locator("#errors tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0).locator("td")).to_have_text(["3", "imp-2", "lat", re.compile("swapped")])
    expect(rows.nth(1).locator("td")).to_have_text(
        ["4", "imp-3", "radius_m", re.compile("outside 10 m")]
    )
    expect(page.locator("#apply")).to_be_hidden()
    shot(page, "import-errors")
    r = httpx.get(f"{server.url}/v1/geofences/imp-1", headers=server.headers(Role.admin))
    assert r.status_code == 404, "a check writes nothing"
    page.click("#again")
    good = b"store_id,name,lat,lng,radius_m\nimp-1,New One,41.0,-73.5,50\nimp-2,Fixed,41.05,-73.55,50\n"
    page.set_input_files(
        "#file", files=[{"name": "fixed.csv", "mimeType": "text/csv", "buffer": good}]
    )
    expect(page.locator("#n-created")).to_have_text("2")
    expect(page.locator("#n-errors")).to_have_text("0")
    page.click("#apply")
    expect(page.locator("#result-title")).to_have_text("Applied: fixed.csv")
    expect(page.locator("#message")).to_contain_text("is applied")
    r = httpx.get(f"{server.url}/v1/geofences/imp-2", headers=server.headers(Role.admin))
    assert r.status_code == 200 and r.json()["name"] == "Fixed"


def test_pause_and_resume_a_campaign(page: Page, server: Server) -> None:
    sign_in(page, server.url, server.keys[Role.admin])
    page.click("nav >> text=Campaigns")
    row = page.locator("tr", has_text="Welcome treat")
    expect(row.locator(".badge")).to_have_text("active")
    # Readable at 1280 px: the whole table fits, no sideways scrolling.
    assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
    expect(row).to_contain_text("1 per 7d")
    row.get_by_role("button", name="Pause Welcome treat").click()
    expect(page.get_by_role("status")).to_have_text("Campaign welcome is now paused.")
    expect(page.locator("tr", has_text="Welcome treat").locator(".badge")).to_have_text("paused")
    r = httpx.get(f"{server.url}/v1/campaigns/welcome", headers=server.headers(Role.admin))
    assert r.json()["status"] == "paused"
    shot(page, "campaign-paused")
    page.locator("tr", has_text="Welcome treat").get_by_role(
        "button", name="Resume Welcome treat"
    ).click()
    expect(page.locator("tr", has_text="Welcome treat").locator(".badge")).to_have_text("active")
    r = httpx.get(f"{server.url}/v1/campaigns/welcome", headers=server.headers(Role.admin))
    assert r.json()["status"] == "active"


def test_ask_why_a_user_got_no_offer_then_read_the_report(page: Page, server: Server) -> None:
    sign_in(page, server.url, server.keys[Role.admin])
    httpx.patch(
        f"{server.url}/v1/users/ann",
        json={"first_name": "Ann"},
        headers=server.headers(Role.server),
    )
    page.click("nav >> text=Why no offer?")
    expect(page.get_by_role("heading", name="Why no offer?")).to_be_visible()
    map_ready(page)
    # Click the map where Flatiron is: the point goes into the form.
    page.evaluate(
        f"() => window.consoleMap.jumpTo({{center: [{FLATIRON[1]}, {FLATIRON[0]}], zoom: 17}})"
    )
    map_ready(page)
    box = page.locator("#map").bounding_box()
    assert box is not None
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    assert abs(float(page.input_value("#lat")) - FLATIRON[0]) < 1e-4
    assert abs(float(page.input_value("#lng")) - FLATIRON[1]) < 1e-4
    page.fill("#device_id", "console-phone-1")
    page.fill("#user_id", "ann")
    page.click("#why-form button[type=submit]")
    answer = page.locator("#answer")
    expect(answer.locator("h2")).to_have_text("Answer: offer_issued")
    expect(answer).to_contain_text("enter nyc-flatiron")
    expect(answer).to_contain_text("Hi Ann, welcome to Flatiron Coffee.")
    rows = answer.locator("table.decisions tbody tr")
    expect(rows).to_have_count(3)
    # In the order of DESIGN §4: the dwell campaign stops at step 4, the audience one at
    # step 5, the winner is issued at step 11.
    expect(rows.nth(0)).to_contain_text("trigger_mismatch")
    expect(rows.nth(1)).to_contain_text("audience_not_included")
    expect(rows.nth(2)).to_contain_text("offer_issued")
    expect(rows.nth(1)).to_contain_text("<script>window.pwned=2</script>Gold latte")
    shot(page, "why-offer")
    coupon = page.locator("#answer code").first.inner_text()
    # Same device, same place, a moment later: no new event, so no offer — and why.
    page.click("#why-form button[type=submit]")
    expect(answer.locator("h2")).to_have_text("Answer: no_trigger")
    expect(answer).to_contain_text("No campaign was considered")
    # The offer is real: redeem it and buy something, then read the report.
    r = httpx.post(
        f"{server.url}/v1/redemptions",
        json={"coupon_code": coupon},
        headers=server.headers(Role.server),
    )
    assert r.status_code == 200, r.text
    r = httpx.post(
        f"{server.url}/v1/users/ann/events",
        json={"type": "purchase", "occurred_at": iso(ago(0))},  # after the exposure
        headers=server.headers(Role.server),
    )
    assert r.status_code == 201, r.text
    page.click("nav >> text=Campaigns")
    expect(page.locator("tr", has_text="Welcome treat").locator("td.num")).to_have_text("1")
    page.click("text=Welcome treat")
    expect(page.get_by_role("heading", name=re.compile("Welcome treat"))).to_be_visible()
    treatment = page.locator("table.report tbody tr", has_text="treatment").locator("td")
    expect(treatment).to_have_text(["1", "1", "1", "1", "100.0 %"])
    expect(page.locator("#lift")).to_contain_text("not available yet")
    today = time.strftime("%Y-%m-%d", time.gmtime())
    expect(page.locator(f"svg.chart rect.issued title:text('{today}: 1 issued')")).to_have_count(1)
    expect(
        page.locator(f"svg.chart rect.redeemed title:text('{today}: 1 redeemed')")
    ).to_have_count(1)
    shot(page, "report")


def test_store_name_with_markup_is_shown_inert(page: Page, server: Server) -> None:
    sign_in(page, server.url, server.keys[Role.admin])
    page.fill("#search", "Evil")
    page.keyboard.press("Enter")
    expect(page.locator("#d-name")).to_have_text(MARKUP)
    expect(page.locator("#results")).to_contain_text(MARKUP)
    expect(page.locator("#d-tags")).to_have_text("<b>bold</b>")
    page.select_option("#tag", "<b>bold</b>")
    page.goto(f"{server.url}/console/campaigns")
    expect(page.locator("body")).to_contain_text("<script>window.pwned=2</script>Gold latte")
    page.goto(f"{server.url}/console/campaigns/latte-gold")
    expect(page.locator(".message")).to_have_text("<svg onload=window.pwned=4>")
    page.hover("h1")
    assert page.evaluate("() => window.pwned") is None, "no marketer markup ran"
    assert page.locator("img[src=x], svg[onload], b[onmouseover]").count() == 0


def test_cookie_flags_and_sign_out(page: Page, server: Server, chromium: Browser) -> None:
    sign_in(page, server.url, server.keys[Role.admin])
    cookie = next(c for c in page.context.cookies() if c["name"] == "go_console")
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert cookie["secure"] is False, "served over plain http here; Secure behind HTTPS"
    assert cookie["path"] == "/console"
    assert 8 * 3600 - 60 < cookie["expires"] - time.time() <= 8 * 3600
    assert "go_console" not in page.evaluate("() => document.cookie"), "scripts cannot read it"
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(f"{server.url}/console/sign-in?signed_out=1")
    expect(page.get_by_role("status")).to_have_text("You are signed out.")
    # The old cookie, replayed in another browser, opens nothing: the session ended on the server.
    ctx, _ = offline_context(chromium, server.url)
    ctx.add_cookies([{**cookie}])
    other = ctx.new_page()
    other.goto(f"{server.url}/console/campaigns")
    expect(other).to_have_url(re.compile(r"/console/sign-in\?next=/console/campaigns"))
    ctx.close()


def test_csrf_token_required_for_changes(page: Page, server: Server) -> None:
    sign_in(page, server.url, server.keys[Role.admin])
    statuses = page.evaluate(
        """async () => {
            const post = (headers, body) => fetch('/console/campaigns/winback/status',
                {method: 'POST', headers, body, redirect: 'manual'}).then(r => r.status);
            const form = {'Content-Type': 'application/x-www-form-urlencoded'};
            const token = document.querySelector('meta[name=csrf-token]').content;
            return [
                await post(form, 'status=paused'),
                await post(form, 'status=paused&csrf=forged'),
                await fetch('/console/api/uploads', {method: 'POST',
                    headers: {'Content-Type': 'application/json'},
                    body: JSON.stringify({kind: 'geofences', filename: 'a.csv', size: 3})}).then(r => r.status),
                await post({...form, 'X-CSRF-Token': token}, 'status=active'),
            ];
        }"""
    )
    assert statuses[:3] == [403, 403, 403]
    assert statuses[3] in (0, 303), statuses  # manual redirect: an opaque redirect answer
    r = httpx.get(f"{server.url}/v1/campaigns/winback", headers=server.headers(Role.admin))
    assert r.json()["status"] == "active"


def test_keyboard_only(page: Page, server: Server) -> None:
    """Navigation, the file drop and the campaign buttons work without a mouse."""
    sign_in(page, server.url, server.keys[Role.admin])

    def tab_to(text: str, limit: int = 40) -> None:
        name = """() => {
            const el = document.activeElement;
            const label = el.labels && el.labels.length ? el.labels[0] : el;
            return label.textContent.replace(/\\s+/g, " ").trim();
        }"""
        for _ in range(limit):
            page.keyboard.press("Tab")
            if page.evaluate(name).startswith(text):
                return
        raise AssertionError(f"{text!r} cannot be reached with Tab")

    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.textContent") == "Skip to content"
    tab_to("Imports")
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{server.url}/console/imports")
    page.wait_for_load_state("load")  # the page's script is listening
    tab_to("Drop a file here or press to choose one")  # the drop zone's file input
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Space")
    chooser.value.set_files(
        files=[
            {
                "name": "k.csv",
                "mimeType": "text/csv",
                "buffer": b"store_id,name,lat,lng\nk-1,Keys,41.2,-73.4\n",
            }
        ]
    )
    expect(page.locator("#n-created")).to_have_text("1")
    page.focus("#apply")
    page.keyboard.press("Enter")
    expect(page.locator("#result-title")).to_have_text("Applied: k.csv")
    page.goto(f"{server.url}/console/campaigns")
    tab_to("Pause")
    page.keyboard.press("Enter")
    expect(page.get_by_role("status")).to_contain_text("is now paused")
    tab_to("Resume")
    page.keyboard.press("Enter")
    expect(page.get_by_role("status")).to_contain_text("is now active")


def reload_until(page: Page, where: Locator, text: str, timeout_s: float = 20) -> None:
    """Reload until ``where`` shows ``text`` (server-rendered pages do not update by themselves)."""
    deadline = time.monotonic() + timeout_s
    while not (where.count() and text in where.first.inner_text()):
        assert time.monotonic() < deadline, page.locator("main").inner_text()
        time.sleep(0.3)
        page.reload()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from webhook_receiver.serve()


def test_webhook_endpoint_from_the_console(page: Page, server: Server, receiver: Receiver) -> None:
    """Add an endpoint pointing at a real receiver (it verifies signatures with the Standard
    Webhooks library), copy its secret, redeem an offer, see the delivery, disable, delete."""
    sign_in(page, server.url, server.keys[Role.admin])
    page.click("nav >> text=Webhooks")
    expect(page.get_by_role("heading", name="Webhooks", exact=True)).to_be_visible()
    url = receiver.url("/crm")
    page.fill("#url", url)
    page.check("input[name=events][value='offer.redeemed']")
    expect(page.locator("input[name=scope][value=some]")).to_be_checked()  # "only these"
    page.fill("#store_tags", "nyc, <script>window.pwned=5</script>")
    page.click("#webhook-form button[type=submit]")
    expect(page.get_by_role("heading", name="Endpoint added")).to_be_visible()
    expect(page.get_by_role("alert")).to_contain_text("Copy the secret now")
    secret = page.input_value("#secret")
    assert secret.startswith("whsec_")
    receiver.on("/crm", ok, secrets=[secret])
    shot(page, "webhook-secret")
    page.click("text=I have copied it")
    expect(page.locator("h1")).to_have_text(url)
    assert secret not in page.content(), "the secret is not shown again"
    expect(page.locator(".tag", has_text="<script>window.pwned=5</script>")).to_have_count(1)

    # Something happens: an offer is issued at Flatiron (tagged nyc) and redeemed.
    before = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 2))
    ping = {"device_id": "hooks-phone", "user_id": "hooks-user", "lat": FLATIRON[0],
            "lng": FLATIRON[1], "accuracy_m": 5.0, "timestamp": iso(ago(0))}  # fmt: skip
    r = httpx.post(f"{server.url}/v1/locations", json=ping, headers=server.headers(Role.sdk))
    assert r.status_code == 200 and r.json()["offer"] is not None, r.text
    coupon = r.json()["offer"]["coupon_code"]
    r = httpx.post(
        f"{server.url}/v1/redemptions",
        json={"coupon_code": coupon},
        headers=server.headers(Role.server),
    )
    assert r.status_code == 200, r.text
    receiver.wait_for(lambda: bool(receiver.delivered("/crm")), 30, "the redemption's delivery")
    [got] = receiver.at("/crm")
    assert got.verified_with == [0], "signed with the secret the console showed"
    assert got.envelope["type"] == "offer.redeemed"
    assert got.envelope["data"]["coupon_code"] == coupon

    # The deliveries view shows it, delivered, under the id the receiver saw.
    row = page.locator("table.deliveries tbody tr", has_text=got.id)
    reload_until(page, row, "delivered")
    expect(row.locator("td")).to_have_text(
        [got.id, "offer.redeemed", "delivered", "1", "HTTP 200", re.compile("UTC"), "–"]
    )
    shot(page, "webhook-deliveries")
    # Deliver again, since just before the redemption: the same event, under the same id.
    page.fill("#since", before)
    page.get_by_role("button", name="Queue them again").click()
    expect(page.get_by_role("status")).to_have_text(
        "1 delivery queued again, under the events' own ids."
    )
    receiver.wait_for(lambda: len(receiver.delivered("/crm")) == 2, 30, "the replay")
    assert [r.id for r in receiver.at("/crm")] == [got.id, got.id]
    assert receiver.at("/crm")[1].verified_with == [0]
    page.click("nav >> text=Webhooks")
    listed = page.locator("table.webhooks tbody tr", has_text=url)
    reload_until(page, listed, "delivered · HTTP 200")  # the replay's outcome is stored
    expect(listed.locator(".badge")).to_have_text("enabled")
    shot(page, "webhooks")

    # Disable, from the endpoint's page; then delete, after confirming.
    listed.get_by_role("link", name=url).click()
    page.get_by_role("button", name="Disable").click()
    expect(page.get_by_role("status")).to_contain_text("The endpoint is disabled")
    expect(page.locator("#endpoint-status")).to_contain_text("disabled through the console")
    r = httpx.get(f"{server.url}/v1/webhooks", headers=server.headers(Role.admin))
    [endpoint] = [w for w in r.json()["webhooks"] if w["url"] == url]
    assert endpoint["enabled"] is False
    page.get_by_role("link", name="Delete…").click()
    expect(page.get_by_role("heading", name="Delete this endpoint?")).to_be_visible()
    page.get_by_role("button", name="Delete the endpoint").click()
    expect(page.get_by_role("status")).to_have_text(f"Endpoint {endpoint['id']} is deleted.")
    expect(page.locator("table.webhooks tbody tr", has_text=url)).to_have_count(0)
    r = httpx.get(f"{server.url}/v1/webhooks/{endpoint['id']}", headers=server.headers(Role.admin))
    assert r.status_code == 404
    assert page.evaluate("() => window.pwned") is None, "no marketer markup ran"
