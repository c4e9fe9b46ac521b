"""`geo-offers serve` on PostGIS + Redis runs the event relays in one process of their own
(service/events/process.py): it does the relaying, reports through the workers' /metrics,
is started again when it dies, and does not outlive a serve killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from service.events import process
from service.events.process import RelayProcess
from tests.helpers import iso
from tests.service.test_events_sigkill import FAST, INSIDE, VISIT_STORE
from tests.service.test_server_e2e import cli, server_env, start_server  # noqa: F401

T = TypeVar("T")


def relay_children(parent: int) -> list[int]:
    """The pids of ``parent``'s children running ``service.cli relay``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        if ppid == parent and b"relay" in cmdline and b"service.cli" in cmdline:
            found.append(int(entry.name))
    return found


def wait_until(check: Callable[[], T], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (killed, not yet reaped by its parent) is gone for this purpose.
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"


def sample(base: str, name: str) -> float:
    """A sample's value on /metrics (0 when absent)."""
    text = httpx.get(f"{base}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def test_serve_runs_the_relays_in_a_process_of_their_own(
    server_env: dict[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    env = {**server_env, **FAST}
    admin = cli(env, "keys", "create", "--role", "admin").stdout.strip()
    sdk = cli(env, "keys", "create", "--role", "sdk").stdout.strip()
    proc, base = start_server(env, tmp_path)
    try:
        (first,) = wait_until(lambda: relay_children(proc.pid), 30, "the relay process")
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {admin}"}) as c:
            r = c.post("/v1/geofences/import", files={"file": ("s.csv", VISIT_STORE)})
            assert r.status_code == 200, r.text
        wait_until(lambda: httpx.get(f"{base}/readyz").status_code == 200, 10, "ready")
        body = {"device_id": "rp-1", "lat": INSIDE[0], "lng": INSIDE[1], "accuracy_m": 5,
                "timestamp": iso(datetime.now(UTC) - timedelta(seconds=1))}  # fmt: skip
        r = httpx.post(
            f"{base}/v1/locations", json=body, headers={"Authorization": f"Bearer {sdk}"}
        )
        assert [e["type"] for e in r.json()["events"]] == ["enter"], r.text
        # The worker runs no relay: the visit event is imported by the relay process, and its
        # counter reaches /metrics through the multiprocess files, beside the worker's own.
        wait_until(
            lambda: sample(base, "geo_offers_events_imported_total") >= 1,
            30,
            "the enter imported, on /metrics",
        )
        assert sample(base, 'geo_offers_pings_total{reason="no_campaign"}') == 1

        os.kill(first, signal.SIGKILL)
        (second,) = wait_until(
            lambda: [p for p in relay_children(proc.pid) if p != first], 30, "a new relay process"
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        wait_until(lambda: not alive(second), 10, "the relay process to end with serve")
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)


def test_a_stopped_serve_stops_its_relay_process(
    server_env: dict[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    proc, _ = start_server(server_env, tmp_path)
    try:
        (relay,) = wait_until(lambda: relay_children(proc.pid), 30, "the relay process")
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(30) == 0
        assert not alive(relay)
        assert "exited (code" not in (tmp_path / next(iter(os.listdir(tmp_path)))).read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_a_relay_process_that_keeps_dying_is_started_again_ever_more_slowly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(process, "RESTART_DELAY_S", 0.01)
    monkeypatch.setattr(process, "RESTART_MAX_S", 0.08)

    class Dying(RelayProcess):
        def _spawn(self) -> subprocess.Popen[bytes]:
            self.starts += 1
            return subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])

    relay = Dying({})
    waits: list[float | None] = []
    wait = relay._stopping.wait

    def recorded(timeout: float | None = None) -> bool:
        waits.append(timeout)
        return wait(timeout)

    monkeypatch.setattr(relay._stopping, "wait", recorded)
    relay.start()
    try:
        wait_until(lambda: len(waits) >= 5, 30, "five restarts")
    finally:
        relay.stop()
    assert waits[:5] == [0.01, 0.02, 0.04, 0.08, 0.08]
    assert relay.starts >= 5
