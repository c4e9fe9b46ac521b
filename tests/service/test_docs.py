"""The API's documents work offline and authorise: a Bearer scheme on every keyed route,
Swagger UI and ReDoc with assets served by the service itself, errors documented."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.conftest import Api
from tests.service.test_server_e2e import start_server

KEYED = ("/v1/",)


def _operations(doc: dict) -> list[tuple[str, str, dict]]:
    return [
        (path, method, op)
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
        if path.startswith(KEYED)
    ]


def test_every_keyed_route_declares_the_bearer_scheme(api: Api) -> None:
    doc = api.client.get("/openapi.json").json()
    scheme = doc["components"]["securitySchemes"]["bearer"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    operations = _operations(doc)
    assert len(operations) >= 16
    for path, method, op in operations:
        assert op.get("security") == [{"bearer": []}], (method, path)
    for path in ("/healthz", "/readyz"):
        assert "security" not in doc["paths"][path]["get"]


def test_every_keyed_route_documents_its_errors_in_the_one_shape(api: Api) -> None:
    doc = api.client.get("/openapi.json").json()
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    error = doc["components"]["schemas"]["ErrorOut"]
    assert error["required"] == ["error"]
    for path, method, op in _operations(doc):
        for status in ("401", "403", "422", "503"):
            schema = op["responses"][status]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorOut"}, (method, path, status)
        assert "Retry-After" in op["responses"]["503"]["headers"]
    assert "202" in doc["paths"]["/v1/users/{user_id}"]["delete"]["responses"]
    assert "429" in doc["paths"]["/v1/locations"]["post"]["responses"]


def test_docs_pages_load_their_assets_from_the_service(api: Api) -> None:
    for page, assets in (
        ("/docs", ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png")),
        ("/redoc", ("redoc.standalone.js", "favicon.png")),
    ):
        html = api.client.get(page).text
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), html
        assert "fonts.googleapis" not in html
        for asset in assets:
            assert f"/docs/assets/{asset}" in html
            r = api.client.get(f"/docs/assets/{asset}")
            assert r.status_code == 200 and len(r.content) > 1000, asset
    assert "persistAuthorization" in api.client.get("/docs").text
    for page in ("/docs", "/redoc"):  # the browser itself refuses anything from elsewhere
        csp = api.client.get(page).headers["content-security-policy"]
        assert "default-src 'self'" in csp and "img-src 'self' data:" in csp


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEO_OFFERS_")}
    env["GEO_OFFERS_DATA_DIR"] = str(tmp_path / "data")
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    proc, url = start_server(env, tmp_path)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium")
@pytest.mark.parametrize(
    ("page", "rendered"),
    [("/docs", ["Authorize", "/v1/users/{user_id}/erasure"]),
     ("/redoc", ["Process one location ping", "An erasure's status", "bearer"])],
)  # fmt: skip
def test_docs_render_in_a_browser_that_reaches_no_other_host(
    server: str, tmp_path: Path, page: str, rendered: list[str]
) -> None:
    # Every host but this machine fails to resolve: a page that needed a CDN stays blank.
    run = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu",
         f"--user-data-dir={tmp_path / 'profile'}",
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
         "--virtual-time-budget=15000", "--dump-dom", f"{server}{page}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    for text in rendered:
        assert text in run.stdout, (text, run.stderr[-2000:])
