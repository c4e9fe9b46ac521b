"""API keys: the CLI creates, lists and revokes; roles are enforced on every route."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from service.app import create_app
from service.cli import main
from service.settings import Settings
from tests.helpers import ago, iso

ROUTES = [
    ("POST", "/v1/locations", "sdk"),
    ("POST", "/v1/locations/batch", "sdk"),
    ("PATCH", "/v1/users/u1", "server"),
    ("POST", "/v1/users/u1/events", "server"),
    ("POST", "/v1/redemptions", "server"),
    ("DELETE", "/v1/users/u1", "admin"),
    ("POST", "/v1/geofences/import", "admin"),
    ("GET", "/v1/geofences", "admin"),
    ("GET", "/v1/geofences/s1", "admin"),
    ("DELETE", "/v1/geofences/s1", "admin"),
    ("POST", "/v1/campaigns/import", "admin"),
    ("GET", "/v1/campaigns", "admin"),
    ("GET", "/v1/campaigns/c1", "admin"),
    ("PATCH", "/v1/campaigns/c1", "admin"),
    ("GET", "/v1/campaigns/c1/report", "admin"),
]


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("GEO_OFFERS_DATABASE_URL", "DATABASE_URL", "GEO_OFFERS_REDIS_URL", "REDIS_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GEO_OFFERS_DATA_DIR", str(tmp_path / "data"))
    return tmp_path


def test_cli_create_list_revoke(env: Path) -> None:
    runner = CliRunner()
    created = runner.invoke(main, ["keys", "create", "--role", "sdk", "--label", "ios"])
    assert created.exit_code == 0, created.output
    key = created.stdout.strip()
    assert key.startswith("go_sdk_") and len(key) > 40
    listed = runner.invoke(main, ["keys", "list"]).stdout
    assert "sdk" in listed and "ios" in listed and key not in listed
    key_id = listed.split()[0]
    app = create_app(Settings(key_cache_s=0))
    body = {"device_id": "d", "lat": 1.0, "lng": 1.0, "accuracy_m": 5, "timestamp": iso(ago(1))}
    with TestClient(app) as client:
        auth = {"Authorization": f"Bearer {key}"}
        assert client.post("/v1/locations", json=body, headers=auth).status_code == 200
        assert runner.invoke(main, ["keys", "revoke", key_id]).exit_code == 0
        r = client.post("/v1/locations", json=body, headers=auth)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert runner.invoke(main, ["keys", "revoke", key_id]).exit_code != 0


def test_every_route_checks_its_role(env: Path) -> None:
    runner = CliRunner()
    keys = {
        r: runner.invoke(main, ["keys", "create", "--role", r]).stdout.strip()
        for r in ("sdk", "server", "admin")
    }
    with TestClient(create_app(Settings())) as client:
        for method, path, needs in ROUTES:
            assert client.request(method, path).status_code == 401, (method, path)
            for role, key in keys.items():
                status = client.request(
                    method, path, headers={"Authorization": f"Bearer {key}"}
                ).status_code
                allowed = role == needs or role == "admin"
                assert (status != 403) == allowed, (method, path, role, status)
                assert status != 500, (method, path, role)


def test_bootstrap_admin_key_from_a_setting(env: Path) -> None:
    key = "bootstrap-" + "x" * 40
    with TestClient(create_app(Settings(bootstrap_admin_key=key))) as client:
        assert (
            client.get("/v1/geofences", headers={"Authorization": f"Bearer {key}"}).status_code
            == 200
        )
    # Restarting with the same setting does not create a second key.
    with TestClient(create_app(Settings(bootstrap_admin_key=key))):
        pass
    listed = CliRunner().invoke(main, ["keys", "list"]).stdout
    assert listed.count("bootstrap") == 1 and key not in listed
    with (
        pytest.raises(ValueError, match="32"),
        TestClient(create_app(Settings(bootstrap_admin_key="short"))),
    ):
        pass
