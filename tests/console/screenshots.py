"""Screenshots of the console for the README: ``.venv/bin/python -m tests.console.screenshots``.

Starts ``geo-offers serve --demo`` on a fresh embedded data directory, adds 20,000
generated stores around twenty US cities (so the map shows clusters), signs in with the
admin key the demo prints, and saves one PNG per page into ``console-shots/``
(git-ignored). With ``pngquant`` installed (Debian: ``apt-get install pngquant``) it also
writes the small, 256-colour copies the README shows (``docs/`` is where they are
committed from).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.console.browser import browser, map_ready, offline_context, sign_in, watch_console

OUT = Path("console-shots")


def main() -> None:
    OUT.mkdir(exist_ok=True)
    data = tempfile.mkdtemp(prefix="geo-offers-shots-")
    port = 8765
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEO_OFFERS_")}
    env.update(GEO_OFFERS_DATA_DIR=data, GEO_OFFERS_LOG_LEVEL="WARNING")
    log = Path(data) / "server.log"
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "geo-offers"), "serve", "--demo", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=log.open("wb"),
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        key = _wait(base, log)
        _more_stores(base, key)
        with browser() as b:
            ctx, guard = offline_context(b, base, 1280, 800)
            page = ctx.new_page()
            watch_console(page, guard)
            page.goto(f"{base}/console/sign-in")
            page.screenshot(path=OUT / "sign-in.png")
            sign_in(page, base, key)
            page.fill("#search", "coffee")
            page.press("#search", "Enter")
            page.wait_for_selector("#results li")
            page.click("#results li button >> nth=0")
            page.wait_for_selector("#details:not([hidden])")
            time.sleep(2.5)
            map_ready(page)
            page.screenshot(path=OUT / "stores-found.png")
            page.goto(f"{base}/console/stores")
            page.fill("#search", "nyc-flatiron")
            page.press("#search", "Enter")
            page.wait_for_selector("#details:not([hidden])")
            page.evaluate("() => window.consoleMap.jumpTo({center: [-87, 38.5], zoom: 3.6})")
            map_ready(page)
            time.sleep(1.5)
            page.screenshot(path=OUT / "stores.png")
            page.goto(f"{base}/console/campaigns")
            page.screenshot(path=OUT / "campaigns.png", full_page=True)
            page.goto(f"{base}/console/campaigns/welcome")
            page.screenshot(path=OUT / "report.png", full_page=True)
            page.goto(f"{base}/console/imports")
            bad = b"store_id,name,lat,lng,radius_m\ns1,Ok,40.7,-73.9,50\ns2,Swapped,-73.9,40.7,50\ns3,Tiny,40.7,-73.9,2\n"
            page.set_input_files(
                "#file", files=[{"name": "stores.csv", "mimeType": "text/csv", "buffer": bad}]
            )
            page.wait_for_selector("#result:not([hidden])")
            page.screenshot(path=OUT / "imports.png", full_page=True)
            page.goto(f"{base}/console/why?lat=40.74172&lng=-73.98964")
            page.fill("#user_id", "user-42")
            page.click("#why-form button[type=submit]")
            page.wait_for_selector("#answer")
            map_ready(page)
            page.screenshot(path=OUT / "why.png", full_page=True)
            hook = {
                "url": "http://127.0.0.1:9/crm",
                "events": ["offer.redeemed"],
                "store_tags": ["nyc"],
            }
            httpx.post(f"{base}/v1/webhooks", json=hook, headers={"Authorization": f"Bearer {key}"})
            page.goto(f"{base}/console/webhooks")
            page.screenshot(path=OUT / "webhooks.png", full_page=True)
            print("blocked requests:", guard.blocked)
            print("console errors:", guard.console_errors)
    finally:
        proc.terminate()
        proc.wait(10)
    print(f"screenshots in {OUT}/")
    if shutil.which("pngquant"):
        for png in OUT.glob("*.png"):
            if not png.name.endswith("-small.png"):
                subprocess.run(
                    ["pngquant", "--force", "--quality=60-85", "--output",
                     str(png.with_name(png.stem + "-small.png")), str(png)],
                    check=True,
                )  # fmt: skip
        print("256-colour copies: *-small.png")


CITIES = [
    (40.71, -74.01),
    (34.05, -118.24),
    (41.88, -87.63),
    (29.76, -95.37),
    (33.45, -112.07),
    (39.95, -75.17),
    (29.42, -98.49),
    (32.72, -117.16),
    (32.78, -96.80),
    (37.34, -121.89),
    (30.27, -97.74),
    (39.74, -104.99),
    (47.61, -122.33),
    (42.36, -71.06),
    (25.76, -80.19),
    (33.75, -84.39),
    (44.98, -93.27),
    (45.52, -122.68),
    (36.17, -115.14),
    (38.91, -77.04),
]


def _more_stores(base: str, key: str, n: int = 20_000) -> None:
    rng = random.Random(7)
    rows = ["store_id,name,lat,lng,radius_m,tags"]
    for i in range(n):
        lat, lng = rng.choice(CITIES)
        spread = rng.choice((0.05, 0.15, 0.4))
        lat, lng = lat + rng.gauss(0, spread), lng + rng.gauss(0, spread * 1.3)
        rows.append(
            f"gen-{i:05d},Store {i:05d},{lat:.5f},{lng:.5f},{rng.choice((50, 100, 250))},generated"
        )
    r = httpx.post(
        f"{base}/v1/geofences/import",
        files={"file": ("generated.csv", ("\n".join(rows) + "\n").encode())},
        headers={"Authorization": f"Bearer {key}"},
        timeout=300,
    )
    r.raise_for_status()


def _wait(base: str, log: Path) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        found = re.search(r"admin:\s+(go_admin_\S+)", text)
        if found:
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    return found.group(1)
            except httpx.HTTPError:
                pass
        time.sleep(0.3)
    raise SystemExit("the demo server did not start:\n" + log.read_text(errors="replace"))


if __name__ == "__main__":
    main()
