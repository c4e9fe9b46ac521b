"""Per-device state behind one interface: Redis in production, in-process when embedded."""

from service.state.base import StateStore, StateUnavailable, Step

__all__ = ["StateStore", "StateUnavailable", "Step"]
