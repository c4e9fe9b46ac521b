"""A private 3-node Redis Cluster for tests (never the machine's shared Redis).

Started on free local ports in a temporary directory with ``redis-server
--cluster-enabled yes`` and ``redis-cli --cluster create``; stopped by pid at the end.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis


def _free_port() -> int:
    """A port that is free together with its cluster-bus port (port + 10000)."""
    for _ in range(200):
        port = random.randint(20_000, 29_999)
        try:
            for p in (port, port + 10_000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair")


@pytest.fixture(scope="session")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """OPTIONAL: a 3-node Redis Cluster (no replicas) of this test session, shut down after."""
    if not (shutil.which("redis-server") and shutil.which("redis-cli")):
        pytest.skip("redis-server / redis-cli not installed")
    tmp: Path = tmp_path_factory.mktemp("redis-cluster")
    ports: list[int] = []
    while len(ports) < 3:
        port = _free_port()
        if port not in ports:
            ports.append(port)
    pidfiles = [tmp / f"{p}.pid" for p in ports]
    try:
        for port, pidfile in zip(ports, pidfiles, strict=True):
            subprocess.run(
                [
                    *("redis-server", "--port", str(port), "--bind", "127.0.0.1"),
                    *("--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"),
                    *("--save", "", "--appendonly", "no", "--daemonize", "yes"),
                    *("--dir", str(tmp), "--pidfile", str(pidfile)),
                ],
                check=True,
                capture_output=True,
            )
        for port in ports:
            _wait(partial(_ping, port))
        subprocess.run(
            [
                *("redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports)),
                *("--cluster-replicas", "0", "--cluster-yes"),
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        for port in ports:
            _wait(partial(_cluster_ok, port))
        yield f"redis://127.0.0.1:{ports[0]}/0"
    finally:
        for pidfile in pidfiles:
            # Only the servers this fixture started, by the pid each one wrote.
            if pidfile.exists():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pidfile.read_text().strip()), signal.SIGTERM)


def _ping(port: int) -> bool:
    with redis.Redis(port=port) as r:
        return bool(r.ping())


def _cluster_ok(port: int) -> bool:
    with redis.Redis(port=port, decode_responses=True) as r:
        info = r.execute_command("CLUSTER INFO")
    # redis-py parses the reply into a dict; older versions hand back the raw text.
    if isinstance(info, dict):
        return str(info.get("cluster_state")) == "ok"
    return "cluster_state:ok" in str(info)


def _wait(check: Callable[[], Any], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("redis cluster did not come up")
        time.sleep(0.05)
