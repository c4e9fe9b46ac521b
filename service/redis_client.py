"""The redis-py asyncio client every Redis-backed store uses: one place for its timeouts."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

Client = aioredis.Redis | RedisCluster


def redis_client(
    url: str, *, cluster: bool = False, timeout_s: float = 2.0, name: str | None = None
) -> Client:
    """A client for ``url``: a Redis Cluster client when ``cluster``, else a single-node one
    that checks an idle connection before reusing it. Commands time out after
    ``timeout_s``; connecting after 2 s. ``name``: its connections' name in ``CLIENT LIST``
    (``CLIENT SETNAME`` on connect)."""
    if cluster:
        return RedisCluster.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=2.0, client_name=name
        )
    return aioredis.Redis.from_url(
        url, socket_timeout=timeout_s, socket_connect_timeout=2.0, health_check_interval=10,
        client_name=name,
    )  # fmt: skip
