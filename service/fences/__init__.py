"""Geofences: marketer imports, listing, and the in-memory index each replica serves from."""
