"""Smoke run of the load test, so the locust scenario, the seed step and the SLO gate cannot rot.

A real ``geo-offers serve`` (embedded default, temp data dir, free port) is seeded with 50
stores and the campaigns, then the gate runs a few seconds of load twice: with generous
thresholds (must pass, leave reports, and hit every request group) and with an impossible
p99 (must fail).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent / "geo-offers"
GROUPS = {
    "POST /v1/locations",
    "POST /v1/locations/batch",
    "PATCH /v1/users/{user_id}",
    "POST /v1/users/{user_id}/events",
}


@dataclass(frozen=True)
class Seeded:
    url: str
    seed: Path
    tmp: Path
    env: dict[str, str]  # for the gate: scenario knobs on top of the clean environment


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a child we started (and its process group), politely first."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    """A seeded embedded service, stopped at the end of the module."""
    tmp = tmp_path_factory.mktemp("loadtest")
    # Embedded whatever the caller's environment says, and away from the repo's data dir.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("GEO_OFFERS_") and k not in ("DATABASE_URL", "REDIS_URL")
    }
    env["GEO_OFFERS_DATA_DIR"] = str(tmp / "data")

    def key(role: str) -> str:
        out = subprocess.run(
            [str(BIN), "keys", "create", "--role", role],
            env=env, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        return out.stdout.strip()

    keys = {role: key(role) for role in ("admin", "sdk", "server")}
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(BIN), "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "not ready: " + log_path.read_text()
            time.sleep(0.2)
        seed = tmp / "seed.json"
        subprocess.run(
            [sys.executable, "-m", "loadtest.seed", "--url", url, "--admin-key", keys["admin"],
             "--sdk-key", keys["sdk"], "--server-key", keys["server"], "--stores", "50",
             "--out", str(seed)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        # Fast phones and backend, many offline batches: every group shows up in seconds.
        gate_env = {
            **env,
            "GEO_OFFERS_LOAD_PING_INTERVAL": "0.2-0.6",
            "GEO_OFFERS_LOAD_BACKEND_INTERVAL": "0.2-0.6",
            # Every phone session starts with an offline batch: the 6 s run must see one.
            "GEO_OFFERS_LOAD_OFFLINE_P": "1",
        }
        yield Seeded(url, seed, tmp, gate_env)
    finally:
        _stop(proc)


def _gate(service: Seeded, report: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loadtest.slo", "--host", service.url, "--seed",
         str(service.seed), "--users", "4", "--spawn-rate", "4", "--report-dir", str(report),
         "--stop-timeout", "2", *args],
        cwd=ROOT, env=service.env, capture_output=True, text=True, timeout=90,
    )  # fmt: skip


def test_gate_passes_and_every_group_is_exercised(service: Seeded) -> None:
    report = service.tmp / "pass"
    run = _gate(
        service, report,
        "--run-time", "6s", "--p95-ms", "3000", "--p99-ms", "5000", "--max-error-ratio", "0.05",
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.startswith("SLO ok"), run.stdout
    assert len(run.stdout.strip().splitlines()) == 1, "one summary line"
    assert (report / "report.html").stat().st_size > 0
    with (report / "locust_stats.csv").open(newline="") as fh:
        rows = {r["Name"]: r for r in csv.DictReader(fh)}
    counts = {name: int(rows[name]["Request Count"]) if name in rows else 0 for name in GROUPS}
    assert all(n > 0 for n in counts.values()), counts
    # Grouped by name: no raw URL with an id becomes its own stats row.
    assert not [n for n in rows if "/users/" in n and "{user_id}" not in n], sorted(rows)
    assert int(rows["Aggregated"]["Failure Count"]) == 0, (
        report / "locust_failures.csv"
    ).read_text()


def test_gate_fails_on_an_impossible_threshold(service: Seeded) -> None:
    report = service.tmp / "breach"
    run = _gate(service, report, "--run-time", "3s", "--p99-ms", "0.001")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "SLO breached: p99" in run.stdout, run.stdout
    assert (report / "report.html").is_file()


class _AlmostRight(BaseHTTPRequestHandler):
    """200 with a body that is JSON but breaks the contract (unknown reason, no results)."""

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.dumps({"ping_id": "p", "events": [], "offer": None, "reason": "maybe"})
        self.send_response(201 if self.path.endswith("/events") else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    do_POST = do_PATCH = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_a_200_with_a_malformed_body_is_a_failure(service: Seeded) -> None:
    fake = ThreadingHTTPServer(("127.0.0.1", 0), _AlmostRight)
    threading.Thread(target=fake.serve_forever, daemon=True).start()
    try:
        report = service.tmp / "malformed"
        run = _gate(
            Seeded(f"http://127.0.0.1:{fake.server_address[1]}", service.seed, service.tmp,
                   service.env),
            report, "--run-time", "2s",
        )  # fmt: skip
    finally:
        fake.shutdown()
        fake.server_close()
    assert run.returncode == 1, run.stdout + run.stderr
    assert "SLO breached: error ratio 100.00 %" in run.stdout, run.stdout


def test_a_named_seed_file_that_is_missing_is_named(tmp_path: Path) -> None:
    # The README's "any host" gate run needs a seed file; without one it blamed the key.
    missing = tmp_path / "nowhere.json"
    run = subprocess.run(
        [sys.executable, "-c", "import loadtest.locustfile"],
        env={**os.environ, "GEO_OFFERS_LOAD_SEED": str(missing)},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode != 0
    assert f"seed file {missing} not found: create it first with python -m loadtest.seed" in (
        run.stderr
    )
