"""Helpers shared by the console's browser tests and the screenshot script: Debian's
Chromium driven by Playwright, with every request to another host aborted and recorded."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from playwright.sync_api import Browser, BrowserContext, Page, Route, sync_playwright

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    # WebGL without a GPU (MapLibre needs it): SwiftShader, software only.
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
]


@dataclass
class Offline:
    """Requests the page tried to send to any host but the service's (all aborted)."""

    base: str
    blocked: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    def route(self, route: Route) -> None:
        url = route.request.url
        parts = urlsplit(url)
        if parts.scheme in ("data", "blob") or f"{parts.scheme}://{parts.netloc}" == self.base:
            route.continue_()
            return
        self.blocked.append(url)
        route.abort()


@contextmanager
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        raise RuntimeError(
            f"chromium is missing ({CHROMIUM}): install Debian's chromium (apt-get install "
            "chromium); ./dev test does it when run as root"
        )
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def offline_context(
    b: Browser, base: str, width: int = 1280, height: int = 800
) -> tuple[BrowserContext, Offline]:
    ctx = b.new_context(viewport={"width": width, "height": height})
    guard = Offline(urlsplit(base).scheme + "://" + urlsplit(base).netloc)
    ctx.route("**/*", guard.route)
    return ctx, guard


def watch_console(page: Page, guard: Offline) -> None:
    page.on(
        "console",
        lambda msg: guard.console_errors.append(msg.text) if msg.type == "error" else None,
    )
    page.on("pageerror", lambda exc: guard.console_errors.append(f"pageerror: {exc}"))


def sign_in(page: Page, base: str, key: str) -> None:
    page.goto(f"{base}/console/")
    page.fill("#key", key)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/console/stores")


def map_ready(page: Page, timeout_ms: int = 30_000) -> None:
    """Wait until the map has loaded its style and tiles and drawn them."""
    page.wait_for_function(
        "() => window.consoleMap && window.consoleMap.loaded() && window.consoleMap.areTilesLoaded()",
        timeout=timeout_ms,
    )
