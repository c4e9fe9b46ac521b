"""The lean Redis client of the ping path, against the real Redis (and a silent peer)."""

from __future__ import annotations

import asyncio
import socket
import uuid

import pytest
import redis
from redis.exceptions import ConnectionError, ResponseError, TimeoutError

from service.state.resp import LeanRedis, lean_client_supported


def _db_url(redis_url: str, db: int) -> str:
    base = redis_url.rsplit("/", 1)[0] if redis_url.count("/") > 2 else redis_url
    return f"{base}/{db}"


def test_commands_pipeline_and_errors(redis_url: str, redis_prefix: str) -> None:
    async def main() -> None:
        r = LeanRedis(_db_url(redis_url, 5))
        key = f"{redis_prefix}:lean"
        assert await r.execute(b"SET", key, b"\x00bin\xff") == b"OK"
        assert await r.execute(b"GET", key) == b"\x00bin\xff"
        # 500 commands in flight at once leave in few writes and come back in order.
        got = await asyncio.gather(*(r.execute(b"INCR", f"{key}:n") for _ in range(500)))
        assert got == list(range(1, 501))
        with pytest.raises(ResponseError, match="unknown command"):
            await r.execute(b"NOSUCHCOMMAND")
        assert await r.execute(b"EXISTS", key) == 1  # the connection survives an error reply
        # EVALSHA of a script Redis has not seen falls back to EVAL.
        script = b"return {1, ARGV[1], redis.call('EXISTS', KEYS[1])}"
        sha = "0" * 39 + "7"  # not this script's sha: Redis answers NOSCRIPT
        assert await r.evalsha(sha, script, [key], [b"a"]) == [1, b"a", 1]
        await r.execute(b"DEL", key, f"{key}:n")
        await r.aclose()

    asyncio.run(main())
    # The database number of the URL was selected.
    assert redis.Redis.from_url(_db_url(redis_url, 5)).exists(f"{redis_prefix}:lean") == 0


def test_down_and_silent_peers_fail_fast_and_recover(redis_url: str) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]

    async def main() -> None:
        silent = LeanRedis(f"redis://127.0.0.1:{port}", timeout_s=0.3)
        with pytest.raises(TimeoutError):  # accepted by the kernel, never answered
            await silent.execute(b"PING")
        listener.close()
        with pytest.raises(ConnectionError):  # now nobody listens: refused
            await silent.execute(b"PING")
        good = LeanRedis(redis_url)
        assert await good.execute(b"PING") == b"PONG"
        await good.aclose()
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(silent.execute(b"PING"), 5)

    asyncio.run(main())


def test_when_the_lean_client_is_used() -> None:
    assert lean_client_supported("redis://h:6379/0", cluster=False)
    assert lean_client_supported("rediss://u:p@h:6380", cluster=False)
    assert not lean_client_supported("redis://h:6379", cluster=True)
    assert not lean_client_supported("unix:///tmp/redis.sock", cluster=False)


def test_user_and_password_from_the_url(redis_url: str) -> None:
    admin = redis.Redis.from_url(redis_url)
    user, password = f"geotest-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    admin.execute_command("ACL", "SETUSER", user, "on", f">{password}", "~*", "+@all")
    try:
        host = redis_url.split("//", 1)[1].split("/", 1)[0]

        async def main() -> None:
            good = LeanRedis(f"redis://{user}:{password}@{host}/0")
            assert await good.execute(b"ACL", b"WHOAMI") == user.encode()
            await good.aclose()
            bad = LeanRedis(f"redis://{user}:wrong@{host}/0")
            with pytest.raises(ResponseError, match="WRONGPASS"):
                await bad.execute(b"PING")

        asyncio.run(main())
    finally:
        admin.execute_command("ACL", "DELUSER", user)
        admin.close()
