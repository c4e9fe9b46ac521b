"""App fixtures: the real app on real PostGIS + Redis, or on the embedded SQLite default."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.auth import Role, create_key
from service.db.engine import make_engine
from service.db.migrate import upgrade
from service.settings import Settings


@dataclass
class Api:
    client: TestClient
    settings: Settings
    sdk: dict[str, str]
    server: dict[str, str]
    admin: dict[str, str]

    @property
    def app_state(self):
        return self.client.app.state  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def migrated_postgis(postgis_url: str) -> str:
    engine = make_engine(Settings(database_url=postgis_url))
    upgrade(engine)
    engine.dispose()
    return postgis_url


def _reset_postgis(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "TRUNCATE geofences, api_keys, campaigns, policies, users, user_events, offers, "
            "exposures, redemptions, erasures, geofence_versions, geofence_changes, events, webhook_endpoints, webhook_deliveries"
        )
        conn.execute("UPDATE data_versions SET version = 0")


def _make_api(settings: Settings) -> Iterator[Api]:
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=True) as client:
        engine = app.state.engine
        keys = {r: create_key(engine, r, "test") for r in Role}
        yield Api(
            client=client,
            settings=settings,
            sdk={"Authorization": f"Bearer {keys[Role.sdk]}"},
            server={"Authorization": f"Bearer {keys[Role.server]}"},
            admin={"Authorization": f"Bearer {keys[Role.admin]}"},
        )


@pytest.fixture
def pg_settings(
    migrated_postgis: str, redis_url: str, redis_prefix: str, tmp_path: Path
) -> Settings:
    _reset_postgis(migrated_postgis)
    return Settings(
        database_url=migrated_postgis,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        index_poll_s=0.2,
        index_dir=tmp_path / "index",
    )


@pytest.fixture
def api(pg_settings: Settings) -> Iterator[Api]:
    """The app on PostGIS + Redis (production configuration)."""
    yield from _make_api(pg_settings)


@pytest.fixture
def embedded_api(tmp_path: Path) -> Iterator[Api]:
    """The app on the embedded default: SQLite file and in-process state."""
    yield from _make_api(Settings(data_dir=tmp_path / "data", database_url=None, redis_url=None))


@pytest.fixture(params=["postgis", "embedded"])
def any_api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Api]:
    """Both storage configurations: the same behaviour is expected from each."""
    if request.param == "postgis":
        settings = request.getfixturevalue("pg_settings")
    else:
        settings = Settings(data_dir=tmp_path / "data", database_url=None, redis_url=None)
    yield from _make_api(settings)
