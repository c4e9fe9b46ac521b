"""The event relays in a process of their own, beside the HTTP workers.

The relays (webhook fan-out and delivery, the stream relay, the inbox import) are background
work. Inside an HTTP worker they share its event loop and its GIL with the pings: their
database calls run in threads, and a thread holding the GIL delays the loop's next callback.
So ``geo-offers serve`` on PostgreSQL starts them in one process of its own
(``RELAY_PROCESS``, on by default), runs its HTTP workers with ``EVENT_RELAY`` off, and
starts the relay process again if it dies. ``geo-offers relay`` runs the same process by
hand, for a deployment that keeps it apart from the API replicas.

Nothing about delivery depends on where the relays run: every step's state is in the
database or a Redis consumer group, so the process may be killed at any point, and several
(one per replica) may run at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time

from service.db.engine import make_engine
from service.events.relay import STOP_TIMEOUT_S, make_event_relay
from service.processes import become_background
from service.settings import Settings

log = logging.getLogger("geo_offers.events")

PARENT_CHECK_S = 1.0  # how often the relay process checks that its parent still runs
RESTART_DELAY_S = 1.0  # before a relay process that died is started again; doubled after
RESTART_MAX_S = 30.0  # each quick death up to this, and back to 1 s after a run this long
STOP_GRACE_S = STOP_TIMEOUT_S + 5.0  # SIGTERM, then this long, then SIGKILL
#: The relay process's CPU priority below the HTTP workers': at full load the pings come
#: first and the events follow (the backlog gauges show how far behind); not 19, so that
#: under sustained load the relays still get a share (CFS weights: about 1/10 of a worker's).
RELAY_NICE = 10


async def run_relay(settings: Settings, parent_pid: int | None = None) -> None:
    """Run this process's relays until SIGTERM or SIGINT, or until ``parent_pid`` (the
    ``serve`` that started it) is gone."""
    if parent_pid is not None:  # started by serve: it yields the CPU to the HTTP workers
        become_background(RELAY_NICE, parent_pid)
    engine = make_engine(settings)
    relay = make_event_relay(settings.model_copy(update={"event_relay": True}), engine)
    assert relay is not None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await relay.start()
    log.info("event relays started", extra={"event": "relay_started", "pid": os.getpid()})
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), PARENT_CHECK_S)
            if parent_pid is not None and os.getppid() != parent_pid:
                log.warning("the serving process is gone: stopping the event relays")
                break
    finally:
        await relay.stop()
        engine.dispose()


class RelayProcess:
    """The ``geo-offers relay`` child of ``geo-offers serve``: started, watched and started
    again if it exits, stopped with SIGTERM. It runs in a session of its own, so a Ctrl-C
    at the terminal reaches only ``serve``, which then stops it."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self._stopping = threading.Event()
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._watcher = threading.Thread(target=self._watch, name="relay-process", daemon=True)
        self.starts = 0

    def start(self) -> None:
        self._watcher.start()

    def _spawn(self) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "service.cli", "relay", "--parent-pid", str(os.getpid())]
        self.starts += 1
        return subprocess.Popen(argv, env=self.env, start_new_session=True)

    def _watch(self) -> None:
        # Spawned from this thread: Linux's parent-death signal follows the thread that
        # forked, and this one lives as long as ``serve``.
        delay = RESTART_DELAY_S
        while not self._stopping.is_set():
            with self._lock:
                if self._stopping.is_set():
                    return
                self._proc = proc = self._spawn()
            started = time.monotonic()
            code = proc.wait()
            if self._stopping.is_set():
                return
            if time.monotonic() - started >= RESTART_MAX_S:
                delay = RESTART_DELAY_S
            log.error(
                "the event relay process exited (code %s); starting it again in %.0f s",
                code, delay,
            )  # fmt: skip
            self._stopping.wait(delay)
            delay = min(delay * 2, RESTART_MAX_S)

    def stop(self) -> None:
        with self._lock:
            self._stopping.set()
            proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self._watcher.join(timeout=1.0)
