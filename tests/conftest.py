"""Shared fixtures: a throw-away PostGIS database and a Redis key prefix per test session.

The suite talks to real servers. ``GEO_OFFERS_TEST_PG_URL`` (default: the local
``postgres`` superuser over TCP) must point to a server with PostGIS available, and
``GEO_OFFERS_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``) to a Redis. The
``./dev test`` command checks both before pytest starts and says what is missing.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest
import redis

from tests.redis_cluster import cluster_url  # noqa: F401  (a fixture for every test package)

PG_ADMIN_URL = os.environ.get(
    "GEO_OFFERS_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("GEO_OFFERS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _with_db(url: str, dbname: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{dbname}"


@pytest.fixture(scope="session")
def postgis_url() -> Iterator[str]:
    """URL (``postgresql://``) of a fresh database with the PostGIS extension, dropped at the end."""
    name = f"geo_offers_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True)
    except psycopg.OperationalError as exc:  # pragma: no cover - environment problem
        pytest.exit(f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {exc}", returncode=3)
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = _with_db(PG_ADMIN_URL, name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS postgis")
    try:
        yield url
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg(postgis_url: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection to the session's PostGIS database."""
    with psycopg.connect(postgis_url, autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="session")
def redis_url() -> str:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:  # pragma: no cover - environment problem
        pytest.exit(f"Redis is not reachable at {REDIS_URL}: {exc}", returncode=3)
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    prefix = f"geotest-{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
