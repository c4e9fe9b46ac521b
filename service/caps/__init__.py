"""Frequency caps and budgets behind one interface: Redis in production, in-process embedded."""

from service.caps.base import Cap, CapRequest, CapResult, CapStore, CapUnavailable

__all__ = ["Cap", "CapRequest", "CapResult", "CapStore", "CapUnavailable"]
