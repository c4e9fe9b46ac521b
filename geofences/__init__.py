"""geofences: exact store geofences, an H3 index over them, and marketer file parsing.

A pure library: no web framework, no database session. ``service`` builds on it.
"""

from geofences.model import DEFAULT_RADIUS_M, MAX_RADIUS_M, MIN_RADIUS_M, FenceRecord
from geofences.sphere import EARTH_RADIUS_M, sphere_distance_m

__all__ = [
    "DEFAULT_RADIUS_M",
    "EARTH_RADIUS_M",
    "MAX_RADIUS_M",
    "MIN_RADIUS_M",
    "FenceRecord",
    "sphere_distance_m",
]
