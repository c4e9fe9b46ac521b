"""Per-device state behind one interface: Redis in production, in-process when embedded."""
