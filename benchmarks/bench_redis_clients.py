"""CPU per Redis command: redis-py's asyncio client beside the ping path's lean client.

    .venv/bin/python benchmarks/bench_redis_clients.py [--url redis://127.0.0.1:6379/0]

Both clients send the same ``SET`` of 100 bytes (100 keys under a ``geobench-clients:``
prefix, deleted at the end), 20,000 times, with 1 and with 32 commands in flight, on uvloop,
in the same process one after the other. CPU is ``time.process_time()`` of this process
(client side only; the Redis server's own CPU is not counted). The lean client is the one
``service/state/resp.py`` implements; coredis 5.7 was measured once the same way outside the
repository (127-179 us per command) and is not a dependency.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import redis.asyncio as aioredis
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from service.state.resp import LeanRedis

PREFIX = "geobench-clients"
N = 20_000


async def _measure(send: Callable[[int], Awaitable[object]], in_flight: int) -> tuple[float, float]:
    sem = asyncio.Semaphore(in_flight)

    async def one(i: int) -> None:
        async with sem:
            await send(i)

    await asyncio.gather(*(one(i) for i in range(1_000)))  # warm-up
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(N)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return cpu * 1e6 / N, N / wall


async def main(url: str) -> None:
    value = b"x" * 100
    pyredis = aioredis.Redis.from_url(url, socket_timeout=2.0, health_check_interval=10)
    lean = LeanRedis(url)
    clients: dict[str, Callable[[int], Awaitable[object]]] = {
        "redis-py asyncio": lambda i: pyredis.set(f"{PREFIX}:{i % 100}", value),
        "lean (service/state/resp.py)": lambda i: lean.execute(
            b"SET", f"{PREFIX}:{i % 100}", value
        ),
    }
    print(f"{'client':<30}{'in flight':>10}{'CPU us/command':>16}{'commands/s':>12}")
    for in_flight in (1, 32):
        for name, send in clients.items():
            cpu_us, rate = await _measure(send, in_flight)
            print(f"{name:<30}{in_flight:>10}{cpu_us:>16.1f}{rate:>12,.0f}")
    await pyredis.delete(*(f"{PREFIX}:{i}" for i in range(100)))
    await pyredis.aclose()
    await lean.aclose()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="redis://127.0.0.1:6379/0")
    uvloop.run(main(ap.parse_args().url))
