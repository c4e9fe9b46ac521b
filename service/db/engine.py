"""Engine construction for both backends (created in lifespan or by the CLI, never on import)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event

from service.settings import Settings


def make_engine(settings: Settings) -> Engine:
    url = settings.sqlalchemy_url()
    if url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        _sqlite_pragmas(engine)
        return engine
    # No pool_pre_ping: it costs a round trip on every checkout (profiled on the offer path);
    # after a database restart the first failing statement marks the pool invalid and the
    # connections are replaced, so the service still recovers by itself.
    return create_engine(url, pool_size=10, max_overflow=10)


def _sqlite_pragmas(engine: Engine) -> None:
    # pysqlite's own transaction handling defers BEGIN until the first write, which lets two
    # writers both read and then fail; take the write lock up front instead (SQLAlchemy's
    # documented recipe) and use WAL so readers never wait for an import — a transaction
    # opened by read_only() begins deferred, so it does not queue behind a writer.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        read_only = conn.get_execution_options().get(_READ_ONLY, False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


_READ_ONLY = "geo_offers_read_only"


@contextlib.contextmanager
def read_only(engine: Engine) -> Iterator[Connection]:
    """A connection for reads only. On SQLite its transaction does not take the write lock,
    so it never waits for an import or a long write (WAL readers see the last commit); on
    PostgreSQL it is a plain connection."""
    with engine.connect() as conn:
        yield conn.execution_options(**{_READ_ONLY: True})
