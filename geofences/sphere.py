"""Great-circle distance on PostGIS's sphere, bit for bit.

PostGIS 3 answers ``ST_DWithin(a::geography, b::geography, r, false)`` with liblwgeom's
``sphere_distance`` on a sphere of radius ``(2a + b) / 3`` of WGS84. The functions here
repeat the same operations in the same order through the same C math library (Python's
``math`` calls libm), so a point is inside a circle here exactly when PostGIS says so.
Do not "simplify" the arithmetic: reordering it changes the last bits near an edge.
"""

from __future__ import annotations

import math

WGS84_A = 6378137.0
WGS84_RF = 298.257223563
WGS84_B = WGS84_A * (1.0 - 1.0 / WGS84_RF)
#: Mean radius used by PostGIS for sphere computations: (2a + b) / 3 = 6,371,008.7714 m.
EARTH_RADIUS_M = (2.0 * WGS84_A + WGS84_B) / 3.0

_DEG2RAD = math.pi / 180.0


def _lat_rad(lat: float) -> float:
    # liblwgeom: deg2rad(d) = d * M_PI / 180.0, then latitude_radians_normalize (a no-op
    # for valid latitudes).
    return lat * math.pi / 180.0


def _lng_rad(lng: float) -> float:
    # liblwgeom's longitude_radians_normalize: -pi maps to pi; valid input otherwise kept.
    lon = lng * math.pi / 180.0
    if -math.pi < lon <= math.pi:  # every valid longitude but -180: none of the steps below
        return lon  # changes it (a shortcut, not other arithmetic)
    if lon == -math.pi:
        return math.pi
    if lon == -2.0 * math.pi:
        return 0.0
    if lon > 2.0 * math.pi:
        lon = math.remainder(lon, 2.0 * math.pi)
    if lon < -2.0 * math.pi:
        lon = math.remainder(lon, -2.0 * math.pi)
    if lon > math.pi:
        lon = -2.0 * math.pi + lon
    if lon < -math.pi:
        lon = 2.0 * math.pi + lon
    if lon == -2.0 * math.pi:
        lon *= -1.0
    return lon


def sphere_angle(lat1: float, lng1: float, lat2: float, lng2: float) -> float:
    """Central angle in radians between two points given in degrees (liblwgeom order)."""
    s_lat = _lat_rad(lat1)
    s_lon = _lng_rad(lng1)
    e_lat = _lat_rad(lat2)
    e_lon = _lng_rad(lng2)
    d_lon = e_lon - s_lon
    cos_d_lon = math.cos(d_lon)
    cos_lat_e = math.cos(e_lat)
    sin_lat_e = math.sin(e_lat)
    cos_lat_s = math.cos(s_lat)
    sin_lat_s = math.sin(s_lat)
    a1 = cos_lat_e * math.sin(d_lon)
    a1 = a1 * a1
    a2 = cos_lat_s * sin_lat_e - sin_lat_s * cos_lat_e * cos_d_lon
    a2 = a2 * a2
    a = math.sqrt(a1 + a2)
    b = sin_lat_s * sin_lat_e + cos_lat_s * cos_lat_e * cos_d_lon
    return math.atan2(a, b)


def sphere_distance_m(lat1: float, lng1: float, lat2: float, lng2: float) -> float:
    """Distance in metres as PostGIS computes it for ``use_spheroid => false``.

    >>> round(sphere_distance_m(0.0, 0.0, 0.0, 1.0), 3)
    111195.08
    """
    return EARTH_RADIUS_M * sphere_angle(lat1, lng1, lat2, lng2)
