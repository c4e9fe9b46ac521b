"""Exact fences: the "inside" test of DESIGN §3 for circles and polygons, plus exit hysteresis.

A circle is inside exactly when PostGIS ``ST_DWithin(center::geography, ping::geography, r,
false)`` says so; a polygon is inside exactly when ``ST_Covers(geometry(..., 4326), ping)``
does. The H3 index only narrows candidates; these classes decide.
"""

from __future__ import annotations

import math
from typing import Final, TypeAlias

import numpy as np
import shapely
from numpy.typing import NDArray
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from geofences.model import FenceRecord
from geofences.sphere import EARTH_RADIUS_M, sphere_distance_m

#: Metres per degree of latitude (and of longitude at the equator) on PostGIS's sphere.
M_PER_DEG: Final = EARTH_RADIUS_M * math.pi / 180.0
#: Hysteresis floor and share of the radius (DESIGN §3: max(10 m, 20 % of radius)).
MIN_EXIT_MARGIN_M: Final = 10.0
EXIT_MARGIN_SHARE: Final = 0.2


def default_exit_margin_m(radius_m: float) -> float:
    """Default exit margin for a fence of (equivalent) radius ``radius_m``.

    >>> default_exit_margin_m(45.72), default_exit_margin_m(1000.0)
    (10.0, 200.0)
    """
    return max(MIN_EXIT_MARGIN_M, EXIT_MARGIN_SHARE * radius_m)


class CircleFence:
    """A store point with a radius; inside means within ``radius_m`` on PostGIS's sphere.

    Examples
    --------
    >>> f = CircleFence(FenceRecord("s1", "Store", 40.0, -74.0, radius_m=45.72))
    >>> f.covers(40.0, -74.0), f.covers(40.001, -74.0)
    (True, False)
    """

    __slots__ = ("lat", "lng", "name", "radius_m", "store_id", "tags", "timezone")
    kind: Final = "circle"

    def __init__(self, record: FenceRecord) -> None:
        if record.radius_m is None:
            raise ValueError(f"circle fence {record.store_id!r} has no radius")
        self.store_id = record.store_id
        self.name = record.name
        self.tags = record.tags
        self.timezone = record.timezone
        self.lat = record.lat
        self.lng = record.lng
        self.radius_m: float = record.radius_m

    def covers(self, lat: float, lng: float) -> bool:
        """True when the ping is inside, boundary included (exactly PostGIS sphere ST_DWithin)."""
        # Centre first, ping second: the argument order sphere.py reproduces bit for bit.
        return sphere_distance_m(self.lat, self.lng, lat, lng) <= self.radius_m

    def match_distance_m(self, lat: float, lng: float) -> float | None:
        """Distance from the store point if the ping is inside, else None (one trig pass)."""
        d = sphere_distance_m(self.lat, self.lng, lat, lng)
        return d if d <= self.radius_m else None

    def distance_m(self, lat: float, lng: float) -> float:
        """Great-circle distance in metres from the store point to the ping."""
        return sphere_distance_m(self.lat, self.lng, lat, lng)

    @property
    def exit_margin_m(self) -> float:
        """Default hysteresis margin: max(10 m, 20 % of the radius)."""
        return default_exit_margin_m(self.radius_m)

    def still_inside(self, lat: float, lng: float, margin_m: float) -> bool:
        """Hysteresis for a device already inside: it stays until beyond radius + margin."""
        return sphere_distance_m(self.lat, self.lng, lat, lng) <= self.radius_m + margin_m

    def __repr__(self) -> str:
        return f"CircleFence({self.store_id!r}, {self.lat}, {self.lng}, r={self.radius_m})"


class PolygonFence:
    """A Polygon/MultiPolygon drawn in the lng/lat plane; inside means covered (edge included).

    Examples
    --------
    >>> square = {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]}
    >>> f = PolygonFence(FenceRecord("s2", "Mall", 0.5, 0.5, geometry=square))
    >>> f.covers(0.5, 0.5), f.covers(0.0, 1.0), f.covers(1.5, 0.5)
    (True, True, False)
    """

    __slots__ = (
        "_equivalent_radius_m", "geom", "lat", "lng", "name", "store_id", "tags", "timezone",
    )  # fmt: skip
    kind: Final = "polygon"
    radius_m: Final = None

    def __init__(self, record: FenceRecord, geom: BaseGeometry | None = None) -> None:
        """``geom``: the record's polygon as a shapely geometry, when the caller has it (the
        index keeps polygons as WKB); else it is made from ``record.geometry``."""
        if geom is None:
            if record.geometry is None:
                raise ValueError(f"polygon fence {record.store_id!r} has no geometry")
            # GeoJSON positions are [lng, lat], so shapely's x is lng and y is lat.
            geom = shape(record.geometry)
        self.store_id = record.store_id
        self.name = record.name
        self.tags = record.tags
        self.timezone = record.timezone
        self.lat = record.lat
        self.lng = record.lng
        shapely.prepare(geom)
        self.geom = geom
        self._equivalent_radius_m: float | None = None

    def covers(self, lat: float, lng: float) -> bool:
        """True when the ping is in the polygon or on its boundary (PostGIS ST_Covers, 4326)."""
        # intersects with a point == covers it; x = lng, y = lat.
        return bool(shapely.intersects_xy(self.geom, lng, lat))

    def match_distance_m(self, lat: float, lng: float) -> float | None:
        """0.0 if the ping is inside (see :meth:`distance_m`), else None."""
        return 0.0 if self.covers(lat, lng) else None

    def distance_m(self, lat: float, lng: float) -> float:
        """Metres from the polygon: 0 inside or on the edge, else to the nearest edge.

        A polygon's store point says little about where its area is (a mall, a campus, an
        airport), so the distance is to the area itself, the same as ``ST_Distance`` to the
        polygon would say. Outside it is the approximate edge distance of
        :meth:`still_inside`, searched within reach of a point on the polygon.

        >>> square = {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]}
        >>> f = PolygonFence(FenceRecord("s2", "Mall", 0.5, 0.5, geometry=square))
        >>> f.distance_m(0.5, 0.5), f.distance_m(1.0, 0.0), round(f.distance_m(0.5, 1.001))
        (0.0, 0.0, 111)
        """
        if self.covers(lat, lng):
            return 0.0
        on = shapely.point_on_surface(self.geom)
        reach = sphere_distance_m(on.y, on.x, lat, lng)  # the nearest edge is no further
        return min(_edge_distance_m(self.geom, lat, lng, reach), reach)

    @property
    def area_m2(self) -> float:
        """Area in square metres (sinusoidal equal-area projection of the densified polygon)."""
        # Edges are straight in the lng/lat plane: densify them before projecting so the
        # projected straight segments follow them. Sinusoidal keeps areas on the sphere and
        # needs no unwrapping, so parts split at +-180 simply add up.
        dense = shapely.segmentize(self.geom, 0.01)

        def sinusoidal(xy: NDArray[np.float64]) -> NDArray[np.float64]:
            lng, lat = xy[:, 0], xy[:, 1]  # x = lng, y = lat
            out = np.empty_like(xy)
            out[:, 0] = np.radians(lng) * np.cos(np.radians(lat)) * EARTH_RADIUS_M
            out[:, 1] = np.radians(lat) * EARTH_RADIUS_M
            return out

        return float(shapely.transform(dense, sinusoidal).area)

    @property
    def equivalent_radius_m(self) -> float:
        """Radius of the circle with the same area: sqrt(area / pi)."""
        if self._equivalent_radius_m is None:
            self._equivalent_radius_m = math.sqrt(self.area_m2 / math.pi)
        return self._equivalent_radius_m

    @property
    def exit_margin_m(self) -> float:
        """Default hysteresis margin: max(10 m, 20 % of the equivalent radius)."""
        return default_exit_margin_m(self.equivalent_radius_m)

    def still_inside(self, lat: float, lng: float, margin_m: float) -> bool:
        """Hysteresis for a device already inside: covered, or within ``margin_m`` of the edge.

        The edge distance is approximate: the polygon, clipped to a box around the ping, is
        projected with a local equirectangular projection centred on the ping (x = dlng *
        cos(lat), y = dlat, in metres), which is accurate to well under 1 % of the margin for
        margins of metres to kilometres away from the poles. Close to a pole (the box reaches
        it) the projection stretches east-west distances, which can only keep a device
        "inside" a little longer. It decides exits only, never enters.
        """
        if self.covers(lat, lng):
            return True
        if margin_m <= 0.0:
            return False
        return _edge_distance_m(self.geom, lat, lng, margin_m) <= margin_m

    def __repr__(self) -> str:
        return f"PolygonFence({self.store_id!r}, {self.geom.geom_type})"


Fence: TypeAlias = CircleFence | PolygonFence


def fence_from_record(rec: FenceRecord) -> Fence:
    """The exact fence for a record: a polygon when it has a geometry, else a circle."""
    if rec.geometry is not None:
        return PolygonFence(rec)
    return CircleFence(rec)


def _edge_distance_m(geom: BaseGeometry, lat: float, lng: float, margin_m: float) -> float:
    """Approximate distance in metres from an outside point to ``geom`` (inf beyond reach)."""
    cos_lat = math.cos(math.radians(lat))
    # Box around the ping that holds every point within the margin (plus slack).
    dlat = 1.01 * margin_m / M_PER_DEG + 1e-9
    lat_lo, lat_hi = max(-90.0, lat - dlat), min(90.0, lat + dlat)
    pole_in_reach = lat_hi >= 90.0 or lat_lo <= -90.0
    dlng = 180.0 if pole_in_reach or cos_lat < 1e-9 else min(180.0, dlat / cos_lat)
    boxes: list[tuple[float, float, float, float]] = []
    lo, hi = lng - dlng, lng + dlng
    if dlng >= 180.0:
        boxes.append((-180.0, lat_lo, 180.0, lat_hi))
    else:
        boxes.append((max(lo, -180.0), lat_lo, min(hi, 180.0), lat_hi))
        # The box wraps across the antimeridian: clip the far side too.
        if lo < -180.0:
            boxes.append((lo + 360.0, lat_lo, 180.0, lat_hi))
        if hi > 180.0:
            boxes.append((-180.0, lat_lo, hi - 360.0, lat_hi))
    parts = [shapely.clip_by_rect(geom, *b) for b in boxes]
    near = [p for p in parts if not p.is_empty]
    if not near:
        return math.inf
    k_lng = max(cos_lat, 1e-9) * M_PER_DEG

    def local(xy: NDArray[np.float64]) -> NDArray[np.float64]:
        # x = lng, y = lat in; metres east/north of the ping out, longitude unwrapped.
        out = np.empty_like(xy)
        out[:, 0] = ((xy[:, 0] - lng + 180.0) % 360.0 - 180.0) * k_lng
        out[:, 1] = (xy[:, 1] - lat) * M_PER_DEG
        return out

    origin = shapely.Point(0.0, 0.0)
    return min(float(shapely.distance(origin, shapely.transform(p, local))) for p in near)
