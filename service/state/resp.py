"""A lean, pipelined Redis client for the ping hot path: RESP over ``asyncio.Protocol``,
replies parsed by hiredis.

Why not redis-py on this path: its asyncio client (a pool checkout, an ``asyncio.wait_for``
around every read, its own parser) spent 2.4-4 times the CPU of this client per command in
every run of ``benchmarks/bench_redis_clients.py`` (``SET`` of 100 bytes, 1 and 32 commands in
flight, uvloop; e.g. 84-204 µs against 23-85 µs); coredis 5.7, measured once the same way,
was slower still. At one script call per ping that difference was a large share of the
ping's CPU. Everything off the
hot path (consent, erasure, caps, scans) keeps using redis-py.

What it does, and no more:

- one connection per process, opened on first use and reopened on the next command after
  a failure (no pool: commands are pipelined, so one connection carries every request);
- a command on an idle connection is written at once; commands issued while others are in
  flight leave together in one ``write`` on the next loop pass (automatic pipelining, as
  ioredis does); replies are matched to commands in order;
- a command not answered within ``timeout_s`` fails, with every command behind it on that
  connection, and the connection is closed (a late reply could otherwise be matched to the
  wrong command);
- failures raise redis-py's own exception classes (``ConnectionError``, ``TimeoutError``,
  ``ResponseError``, ``NoScriptError``), so callers catch ``RedisError`` as before;
- ``redis://`` and ``rediss://`` URLs with an optional user, password and database number.
  Redis Cluster is not spoken here: :func:`lean_client_supported` says when to use it.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from typing import Any
from urllib.parse import unquote, urlsplit

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

Arg = bytes | str | int | float


def lean_client_supported(url: str, cluster: bool) -> bool:
    """True for a single Redis endpoint given as ``redis://`` or ``rediss://``."""
    return not cluster and urlsplit(url).scheme in ("redis", "rediss")


def _encode(args: tuple[Arg, ...]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            raw = arg
        elif isinstance(arg, str):
            raw = arg.encode()
        elif isinstance(arg, int):
            raw = b"%d" % arg
        else:
            raw = repr(float(arg)).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


def _reply_error(message: str) -> ResponseError:
    if message.startswith("NOSCRIPT"):
        return NoScriptError(message)
    return ResponseError(message)


class _Connection(asyncio.Protocol):
    """One socket: writes batched per loop tick, replies handed out first in, first out."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout_s: float) -> None:
        self.loop = loop
        self.timeout_s = timeout_s
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader(replyError=_reply_error)
        self.pending: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.out: list[bytes] = []
        self.flush_scheduled = False
        self.progress = 0.0  # when a reply last arrived or the queue last became busy
        self.watchdog: asyncio.TimerHandle | None = None
        self.error: Exception | None = None

    # asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.progress = time.monotonic()
        self.reader.feed(data)
        pending = self.pending
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError as exc:
                self.abort(RedisConnectionError(f"Redis protocol error: {exc}"))
                return
            if reply is False:
                return
            if not pending:  # a reply nobody asked for: the stream cannot be trusted
                self.abort(RedisConnectionError("unexpected reply from Redis"))
                return
            fut = pending.popleft()
            if not fut.done():
                if isinstance(reply, ResponseError):
                    fut.set_exception(reply)
                else:
                    fut.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}"))

    # commands ---------------------------------------------------------------------------
    def send(self, payload: bytes) -> asyncio.Future[Any]:
        return self.send_many(payload, 1)[0]

    def send_many(self, payload: bytes, n: int) -> list[asyncio.Future[Any]]:
        """Write ``payload`` (``n`` encoded commands); one future per reply, in order."""
        if self.error is not None:
            raise self.error
        futures = [self.loop.create_future() for _ in range(n)]
        idle = not self.pending
        if idle:
            self.progress = time.monotonic()
            if self.watchdog is None:
                self.watchdog = self.loop.call_later(self.timeout_s, self._check)
        self.pending.extend(futures)
        if idle and not self.out and self.transport is not None:
            # Nothing in flight: send now rather than on the next loop pass (one pass fewer
            # per ping at low load); under load commands queue up and leave together.
            self.transport.write(payload)
            return futures
        self.out.append(payload)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)
        return futures

    def _flush(self) -> None:
        self.flush_scheduled = False
        if self.out and self.transport is not None and self.error is None:
            self.transport.write(b"".join(self.out))
        self.out.clear()

    def _check(self) -> None:
        self.watchdog = None
        if not self.pending or self.error is not None:
            return
        idle = time.monotonic() - self.progress
        if idle >= self.timeout_s:
            self.abort(RedisTimeoutError(f"no reply from Redis within {self.timeout_s:g} s"))
        else:
            self.watchdog = self.loop.call_later(self.timeout_s - idle, self._check)

    # failure ------------------------------------------------------------------------------
    def abort(self, exc: Exception) -> None:
        self.fail(exc)
        if self.transport is not None:
            self.transport.abort()

    def fail(self, exc: Exception) -> None:
        if self.error is None:
            self.error = exc
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None
        while self.pending:
            fut = self.pending.popleft()
            if not fut.done():
                fut.set_exception(exc)
        self.out.clear()


class LeanRedis:
    """A single Redis endpoint; see the module docstring for what it does."""

    def __init__(self, url: str, *, timeout_s: float = 2.0, connect_timeout_s: float = 2.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(f"unsupported Redis URL scheme {parts.scheme!r}")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 6379
        self.ssl = ssl.create_default_context() if parts.scheme == "rediss" else None
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        path = parts.path.lstrip("/")
        self.db = int(path) if path else 0
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._conn: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None

    async def execute(self, *args: Arg) -> Any:
        """Send one command and return its reply (bytes, int, list or None)."""
        conn = self._conn
        if conn is None or conn.error is not None or conn.loop is not asyncio.get_running_loop():
            conn = await self._connection()
        return await conn.send(_encode(args))

    async def pipeline(self, *commands: tuple[Arg, ...]) -> list[Any]:
        """Send ``commands`` in one write; their replies in order, a Redis error reply as
        its exception object (not raised), a lost connection raised."""
        conn = self._conn
        if conn is None or conn.error is not None or conn.loop is not asyncio.get_running_loop():
            conn = await self._connection()
        futures = conn.send_many(b"".join(_encode(c) for c in commands), len(commands))
        replies: list[Any] = []
        for fut in futures:
            try:
                replies.append(await fut)
            except ResponseError as exc:
                replies.append(exc)
        return replies

    async def evalsha(self, sha: str, script: bytes, keys: list[Arg], args: list[Arg]) -> Any:
        """``EVALSHA``, loading the script with ``EVAL`` when Redis does not know it yet."""
        try:
            return await self.execute(b"EVALSHA", sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self.execute(b"EVAL", script, len(keys), *keys, *args)

    async def _connection(self) -> _Connection:
        if self._connecting is not None and self._connecting.get_loop() is (
            asyncio.get_running_loop()
        ):
            return await asyncio.shield(self._connecting)
        loop = asyncio.get_running_loop()
        self._connecting = loop.create_future()
        connecting = self._connecting
        try:
            conn = await self._open(loop)
        except BaseException as exc:
            self._connecting = None
            if not connecting.done():
                connecting.set_exception(
                    exc if isinstance(exc, Exception) else RedisConnectionError(str(exc))
                )
                connecting.exception()  # retrieved: waiters, if any, got it too
            raise
        self._conn = conn
        self._connecting = None
        connecting.set_result(conn)
        return conn

    async def _open(self, loop: asyncio.AbstractEventLoop) -> _Connection:
        old, self._conn = self._conn, None
        if old is not None and old.transport is not None and not old.loop.is_closed():
            old.transport.abort()  # (a connection of a closed loop is gone already)
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Connection(loop, self.timeout_s), self.host, self.port, ssl=self.ssl
                ),
                self.connect_timeout_s,
            )
        except (TimeoutError, OSError) as exc:
            raise RedisConnectionError(
                f"cannot connect to Redis at {self.host}:{self.port}: {exc or 'timed out'}"
            ) from exc
        try:
            if self.password is not None:
                auth: tuple[Arg, ...] = (self.password,)
                if self.username is not None:
                    auth = (self.username, self.password)
                await conn.send(_encode((b"AUTH", *auth)))
            if self.db:
                await conn.send(_encode((b"SELECT", self.db)))
        except BaseException:
            conn.abort(RedisConnectionError("Redis handshake failed"))
            raise
        return conn

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.fail(RedisConnectionError("client closed"))
            if conn.transport is not None:
                conn.transport.close()
