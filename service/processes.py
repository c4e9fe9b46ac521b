"""Child processes that do background work beside the HTTP workers (index builds, the event
relays): lower CPU priority, and an end with their parent."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys


def become_background(nice: int, parent_pid: int) -> None:
    """Lower this process's CPU priority by ``nice``, so that it yields the CPU to the
    workers answering pings, and (Linux) have it sent SIGTERM when its parent dies, even by
    SIGKILL. Exits at once if the parent (``parent_pid``) is already gone. (Not "is the
    parent pid 1?": in a container ``geo-offers serve`` is pid 1.)"""
    with contextlib.suppress(OSError, AttributeError):
        os.nice(nice)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # the parent died before the call: nobody to work for
        os._exit(0)
