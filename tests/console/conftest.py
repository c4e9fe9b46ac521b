"""Console fixtures: the app on both backends (from tests/service) and a signed-in client."""

from __future__ import annotations

import re

import psycopg
import pytest
from fastapi.testclient import TestClient

from service.settings import Settings
from tests.service.conftest import (  # noqa: F401  (fixtures)
    Api,
    _reset_postgis,
    any_api,
    api,
    embedded_api,
    migrated_postgis,
)


@pytest.fixture
def pg_settings(migrated_postgis: str, redis_url: str, redis_prefix: str) -> Settings:  # noqa: F811
    """tests/service's PostGIS settings, with the console's tables emptied too."""
    _reset_postgis(migrated_postgis)
    with psycopg.connect(migrated_postgis, autocommit=True) as conn:
        conn.execute(
            "TRUNCATE console_sessions, console_uploads, console_upload_chunks, "
            "console_fence_cells, console_fence_cell_versions"
        )
    return Settings(
        database_url=migrated_postgis,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        index_poll_s=0.2,
    )


def admin_key(target: Api) -> str:
    return target.admin["Authorization"].removeprefix("Bearer ")


def sign_in_form(client: TestClient) -> str:
    """GET the sign-in page; the form's double-submit token."""
    page = client.get("/console/sign-in")
    assert page.status_code == 200
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found is not None
    return found.group(1)


def sign_in(target: Api) -> str:
    """Sign the test client in with the admin key; returns the session's CSRF token."""
    client = target.client
    token = sign_in_form(client)
    r = client.post(
        "/console/sign-in", data={"key": admin_key(target), "csrf": token}, follow_redirects=False
    )
    assert r.status_code == 303, r.text
    return csrf_of(client.get("/console/stores").text)


def csrf_of(html: str) -> str:
    found = re.search(r'<meta name="csrf-token" content="([^"]*)">', html)
    assert found is not None and found.group(1)
    return found.group(1)
