"""Per-device state behind one interface: Redis in production, in-process when embedded."""

from service.state.base import Idle, StateStore, StateUnavailable, Step

__all__ = ["Idle", "StateStore", "StateUnavailable", "Step"]
