"""API keys: roles, hashed storage, and the check of an ``Authorization`` header value.

Keys are 256-bit random tokens, so a plain SHA-256 is enough to store them (no password
stretching needed); only the hash is kept. Lookups are cached for ``key_cache_s`` so the
ping path does not touch the database on every request.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from enum import StrEnum

import anyio.to_thread
from sqlalchemy import Engine, func, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from service.db.models import ApiKey
from service.errors import Forbidden, ServiceUnavailable, Unauthorized


class Role(StrEnum):
    sdk = "sdk"
    server = "server"
    admin = "admin"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(engine: Engine, role: Role, label: str | None = None) -> str:
    """Store a new key's hash and return the key itself (shown once, never stored)."""
    key = f"go_{role.value}_{secrets.token_urlsafe(32)}"
    with engine.begin() as conn:
        conn.execute(
            insert(ApiKey).values(
                id=uuid.uuid4().hex, key_hash=hash_key(key), role=role.value, label=label
            )
        )
    return key


def list_keys(engine: Engine) -> list[dict[str, object]]:
    """Every key's id, role, label and dates (never the key or its hash)."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                ApiKey.id, ApiKey.role, ApiKey.label, ApiKey.created_at, ApiKey.revoked_at
            ).order_by(ApiKey.created_at)
        ).all()
    return [dict(r._mapping) for r in rows]


def revoke_key(engine: Engine, key_id: str) -> bool:
    """Revoke by id; True if a live key was revoked. Replicas stop accepting it within
    ``key_cache_s``."""
    with engine.begin() as conn:
        res = conn.execute(
            update(ApiKey)
            .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
            .values(revoked_at=func.now())
            .returning(ApiKey.id)
        )
        return res.first() is not None


def revoke_labelled(engine: Engine, label: str) -> int:
    """Revoke every live key with ``label`` (the demo's own, at each demo start)."""
    with engine.begin() as conn:
        res = conn.execute(
            update(ApiKey)
            .where(ApiKey.label == label, ApiKey.revoked_at.is_(None))
            .values(revoked_at=func.now())
            .returning(ApiKey.id)
        )
        return len(res.all())


def ensure_key(engine: Engine, key: str, role: Role, label: str) -> None:
    """Make sure ``key`` exists (for a key handed to containers through a setting)."""
    if len(key) < 32:
        raise ValueError("a bootstrap key must be at least 32 characters of randomness")
    with engine.begin() as conn:
        exists = conn.execute(select(ApiKey.id).where(ApiKey.key_hash == hash_key(key))).first()
        if exists is None:
            conn.execute(
                insert(ApiKey).values(
                    id=uuid.uuid4().hex, key_hash=hash_key(key), role=role.value, label=label
                )
            )


class KeyCache:
    def __init__(self, engine: Engine, ttl_s: float) -> None:
        self._engine = engine
        self._ttl = ttl_s
        self._cache: dict[str, tuple[Role | None, float]] = {}

    def _lookup(self, key_hash: str) -> Role | None:
        with self._engine.connect() as conn:
            row = conn.execute(
                select(ApiKey.role).where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
            ).first()
        return Role(row[0]) if row else None

    async def role_of(self, key: str) -> Role | None:
        key_hash = hash_key(key)
        now = time.monotonic()
        hit = self._cache.get(key_hash)
        if hit is not None and hit[1] > now:
            return hit[0]
        try:
            role = await anyio.to_thread.run_sync(self._lookup, key_hash)
        except SQLAlchemyError as exc:
            if hit is not None and hit[0] is not None:
                # The database is down: a key we knew keeps working until it returns.
                return hit[0]
            raise ServiceUnavailable("cannot check API keys right now; retry shortly") from exc
        if len(self._cache) > 100_000:  # bound memory against floods of random keys
            self._cache.clear()
        self._cache[key_hash] = (role, now + (self._ttl if role else min(self._ttl, 2.0)))
        return role


async def check_key(keys: KeyCache, header: str, allowed: frozenset[Role]) -> Role:
    """The role of the key in an ``Authorization`` header value, if it is one of ``allowed``;
    else :class:`Unauthorized` or :class:`Forbidden`."""
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    role = await keys.role_of(key.strip())
    if role is None:
        raise Unauthorized("unknown or revoked API key")
    if role not in allowed:
        raise Forbidden(f"this route needs {_keys(allowed)}; this key has role {role.value}")
    return role


def _keys(roles: frozenset[Role]) -> str:
    """``"a server or an admin key"``: each role with its article.

    >>> _keys(frozenset({Role.admin})), _keys(frozenset({Role.sdk, Role.admin}))
    ('an admin key', 'an admin or an sdk key')
    """
    names = sorted(r.value for r in roles)
    return (
        " or ".join(f"{'an' if n[0] in 'aeiou' or n == 'sdk' else 'a'} {n}" for n in names) + " key"
    )


def allowing(*roles: Role) -> frozenset[Role]:
    """``roles`` and admin (admin keys pass everywhere)."""
    return frozenset({*roles, Role.admin})
