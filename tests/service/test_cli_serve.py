"""`geo-offers serve` as a newcomer meets it: a taken port, repeated demo starts, keep-alive."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.auth import list_keys
from service.cli import _load_demo
from service.db.engine import make_engine
from service.db.migrate import upgrade
from service.settings import Settings
from tests.service.test_server_e2e import BIN, free_port, start_server


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEO_OFFERS_")}
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    env["GEO_OFFERS_DATA_DIR"] = str(tmp_path / "data")
    env.update(extra)
    return env


def test_demo_on_a_taken_port_says_so_before_minting_keys(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = subprocess.run(
            [str(BIN), "serve", "--demo", "--port", str(port)],
            env=_env(tmp_path), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert run.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in run.stderr
    assert "--port" in run.stderr and "demo keys" not in run.stderr
    assert "curl" not in run.stderr
    engine = make_engine(Settings(data_dir=tmp_path / "data"))
    upgrade(engine)
    assert list_keys(engine) == []  # nothing minted for a server that never ran


def test_each_demo_start_leaves_three_demo_keys_valid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = make_engine(Settings(data_dir=tmp_path / "data"))
    upgrade(engine)
    for _ in range(3):
        _load_demo(engine, "127.0.0.1", 8000)
    live = [k for k in list_keys(engine) if k["revoked_at"] is None]
    assert sorted(str(k["role"]) for k in live) == ["admin", "sdk", "server"]
    assert len(list_keys(engine)) == 9
    assert "revoked the 3 keys of the previous demo start" in capsys.readouterr().err


def _request(sock: socket.socket) -> bytes:
    """One request on a kept-alive connection; the whole response (b"" if it was closed)."""
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    sock.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += sock.recv(65536)
    return data


@pytest.fixture
def embedded_server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    extra: dict[str, str] = getattr(request, "param", {})
    proc, url = start_server(_env(tmp_path, **extra), tmp_path)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def test_an_idle_connection_outlives_uvicorns_5_s_default(embedded_server: str) -> None:
    # Behind a balancer with a 60 s idle timeout, the server must not close first: with
    # uvicorn's default (5 s) a request sent on a connection idle for 5 s met a close.
    port = int(embedded_server.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        assert _request(sock).startswith(b"HTTP/1.1 200")
        time.sleep(6.5)
        assert _request(sock).startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize("embedded_server", [{"GEO_OFFERS_KEEP_ALIVE_S": "1"}], indirect=True)
def test_keep_alive_is_a_setting(embedded_server: str) -> None:
    port = int(embedded_server.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        assert _request(sock).startswith(b"HTTP/1.1 200")
        time.sleep(2.5)
        sock.settimeout(5)
        assert sock.recv(1) == b""  # the server closed the idle connection


def test_ctrl_c_stops_the_demo_cleanly(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the process group) after some work: a clean exit, and no
    "leaked semaphore objects" warning from multiprocessing's resource tracker."""
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN), "serve", "--demo", "--port", str(port)], env=_env(tmp_path),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            raise AssertionError("demo did not become ready")
        assert httpx.get(f"{url}/console/sign-in", timeout=5).status_code == 200
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-2000:]
    assert "Application shutdown complete" in text
    assert "leaked" not in text and "Traceback" not in text, text[-2000:]
