"""Console sign-in: an admin key exchanged for a server-side session, and its CSRF token.

The cookie holds a random session id; the ``console_sessions`` table holds only its
SHA-256, the admin key it was opened with and its expiry, so every replica knows the
session, sign-out ends it everywhere, and revoking the key ends it too. The CSRF token is
an HMAC of the session id: nothing more to store, and it dies with the session.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from service.auth import KeyCache, Role, hash_key
from service.console import repository as repo
from service.errors import Forbidden, Unauthorized
from service.timeutil import aware

COOKIE = "go_console"
LOGIN_COOKIE = "go_console_login"  # double-submit token of the sign-in form


@dataclass(frozen=True)
class ConsoleSession:
    id_hash: str
    csrf: str
    expires_at: datetime


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def csrf_token(session_id: str) -> str:
    return hmac.new(session_id.encode(), b"geo-offers console csrf", hashlib.sha256).hexdigest()


def same_token(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


async def check_admin_key(keys: KeyCache, key: str) -> None:
    """The key must be a live admin key (service.auth's verification); else a clear error."""
    key = key.strip()
    if not key:
        raise Unauthorized("enter your admin key")
    role = await keys.role_of(key)
    if role is None:
        raise Unauthorized("this key is not known, or it was revoked")
    if role is not Role.admin:
        article = "a" if role is Role.server else "an"  # an sdk key, a server key
        raise Forbidden(
            f"this is {article} {role.value} key; "
            "the console needs an admin key (geo-offers keys create --role admin)"
        )


def open_session(engine: Engine, key: str, ttl_s: float) -> tuple[str, ConsoleSession]:
    """A new session for a checked admin key: (the cookie's session id, the session)."""
    now = datetime.now(UTC)
    expires = now + timedelta(seconds=ttl_s)
    session_id = secrets.token_urlsafe(32)
    with engine.begin() as conn:
        key_id = repo.key_id_of(conn, hash_key(key.strip()))
        if key_id is None:  # revoked between the check and now
            raise Unauthorized("this key is not known, or it was revoked")
        repo.insert_session(conn, _hash(session_id), key_id, now, expires)
    return session_id, ConsoleSession(_hash(session_id), csrf_token(session_id), expires)


def find_session(engine: Engine, session_id: str) -> ConsoleSession | None:
    if not session_id or len(session_id) > 128:
        return None
    with engine.connect() as conn:
        row = repo.live_session(conn, _hash(session_id), datetime.now(UTC))
    if row is None:
        return None
    return ConsoleSession(row.id_hash, csrf_token(session_id), aware(row.expires_at))


class SessionCache:
    """Sessions found recently, kept ``ttl_s`` — for the embedded default only.

    On SQLite every transaction takes the one write lock, so during a long import each
    console request would wait for it just to read its session; the embedded default is one
    process, so its cache knows every sign-out at once (a key revoked from another process
    is noticed within ``ttl_s``, as API keys are). PostgreSQL reads the table every time,
    so a sign-out ends the session on every replica at once.
    """

    def __init__(self, ttl_s: float) -> None:
        self._ttl = ttl_s
        self._hits: dict[str, tuple[ConsoleSession, float]] = {}
        self._lock = threading.Lock()

    def get(self, session_id: str) -> ConsoleSession | None:
        with self._lock:
            hit = self._hits.get(session_id)
        if hit is None or hit[1] < time.monotonic() or hit[0].expires_at <= datetime.now(UTC):
            return None
        return hit[0]

    def put(self, session_id: str, session: ConsoleSession) -> None:
        with self._lock:
            if len(self._hits) > 10_000:
                self._hits.clear()
            self._hits[session_id] = (session, time.monotonic() + self._ttl)

    def drop(self, id_hash: str) -> None:
        with self._lock:
            for key in [k for k, (s, _) in self._hits.items() if s.id_hash == id_hash]:
                del self._hits[key]


def close_session(engine: Engine, id_hash: str) -> None:
    with engine.begin() as conn:
        repo.delete_session(conn, id_hash)
