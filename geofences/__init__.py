"""geofences: exact store geofences, an H3 index over them, and marketer file parsing.

A pure library: no web framework, no database session. ``service`` builds on it.

>>> from geofences import FenceIndex, FenceRecord
>>> index = FenceIndex.build([FenceRecord("s-1", "Flatiron", 40.74172, -73.98964, radius_m=45.72)])
>>> [(m.fence.store_id, round(m.distance_m, 1)) for m in index.match(40.7420, -73.98964)]
[('s-1', 31.1)]
"""

from geofences.fences import CircleFence, Fence, PolygonFence, fence_from_record
from geofences.index import FenceIndex, Match
from geofences.model import DEFAULT_RADIUS_M, MAX_RADIUS_M, MIN_RADIUS_M, FenceRecord
from geofences.parsing import FileError, ParsedRow, RowError, iter_fences
from geofences.sphere import EARTH_RADIUS_M, sphere_distance_m

__all__ = [
    "DEFAULT_RADIUS_M",
    "EARTH_RADIUS_M",
    "MAX_RADIUS_M",
    "MIN_RADIUS_M",
    "CircleFence",
    "Fence",
    "FenceIndex",
    "FenceRecord",
    "FileError",
    "Match",
    "ParsedRow",
    "PolygonFence",
    "RowError",
    "fence_from_record",
    "iter_fences",
    "sphere_distance_m",
]
