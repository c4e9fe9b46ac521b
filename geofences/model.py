"""Plain records shared by the parser, the index and the service: no geometry engine here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

#: 50 yards, the default radius when a row gives none (DESIGN §3).
DEFAULT_RADIUS_M = 45.72
MIN_RADIUS_M = 10.0
MAX_RADIUS_M = 10_000.0
#: Polygons, in the spirit of the circles' limits: at most 20 km across (a 10 km circle's
#: diameter) either way, at most the area of a 10 km circle, and a bounded vertex count.
MAX_POLYGON_EXTENT_M = 2 * MAX_RADIUS_M
MAX_POLYGON_AREA_M2 = 314_159_265.0  # π · (10 km)²
MAX_POLYGON_VERTICES = 10_000
#: One shared, read-only empty mapping: a fresh dict per record cost 64 bytes a fence, 64 MB
#: at a million fences held by the index.
NO_EXTRA: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class FenceRecord:
    """One store's geofence as uploaded and as stored.

    ``lat``/``lng`` is the store's point: the centre of a circle, or for a polygon the point
    given in the file (else a point inside the polygon). ``geometry`` is a GeoJSON
    ``Polygon``/``MultiPolygon`` mapping with ``[lng, lat]`` positions for polygon fences and
    ``None`` for circles, which have ``radius_m`` instead.
    """

    store_id: str
    name: str
    lat: float
    lng: float
    radius_m: float | None = None
    geometry: dict[str, Any] | None = None
    tags: tuple[str, ...] = ()
    timezone: str = "UTC"
    address: str | None = None
    extra: Mapping[str, Any] = field(default_factory=lambda: NO_EXTRA)

    @property
    def kind(self) -> str:
        return "circle" if self.geometry is None else "polygon"
