"""Offline IANA time zone lookup for store points, and time zone name validation.

Store-local schedules and quiet hours (DESIGN §4) need each store's zone; when a file
does not give one it is derived here from the coordinates, without any network call.
"""

from __future__ import annotations

import functools
import threading
import zoneinfo

from timezonefinder import TimezoneFinder

__all__ = [
    "is_open_sea_or_antarctica",
    "is_valid_timezone",
    "nautical_timezone",
    "timezone_at",
]

# One finder per process: it maps its data files once, and timezonefinder documents a
# shared instance as safe for concurrent reads. Only its creation needs the lock.
_finder: TimezoneFinder | None = None
_finder_lock = threading.Lock()

#: Latitude south of which everything is Antarctica (the Antarctic Treaty's 60° S).
ANTARCTIC_LAT = -60.0


def _get_finder() -> TimezoneFinder:
    global _finder
    finder = _finder
    if finder is None:
        with _finder_lock:
            if _finder is None:
                _finder = TimezoneFinder()
            finder = _finder
    return finder


def nautical_timezone(lng: float) -> str:
    """The nautical zone ``Etc/GMT±N`` for a longitude, as used at sea.

    POSIX-style ``Etc`` names have the sign inverted: east of Greenwich is ``GMT-N``.

    >>> nautical_timezone(-74.0), nautical_timezone(139.7), nautical_timezone(3.0)
    ('Etc/GMT+5', 'Etc/GMT-9', 'Etc/GMT')
    """
    hours = max(-12, min(12, round(lng / 15.0)))
    if hours == 0:
        return "Etc/GMT"
    return f"Etc/GMT{-hours:+d}"


def timezone_at(lat: float, lng: float) -> str:
    """IANA time zone at a point (degrees), or the nautical ``Etc/GMT±N`` zone at sea.

    >>> timezone_at(40.7128, -74.006)
    'America/New_York'
    """
    name = _get_finder().timezone_at(lng=lng, lat=lat)
    return name if name else nautical_timezone(lng)


@functools.cache
def _available_timezones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def is_valid_timezone(name: str) -> bool:
    """True when ``name`` is an IANA zone known to the installed tz database.

    >>> is_valid_timezone("Europe/Paris"), is_valid_timezone("Europe/Pariss")
    (True, False)
    """
    return name in _available_timezones()


def is_open_sea_or_antarctica(tz_name: str | None, lat: float | None = None) -> bool:
    """True when a zone from :func:`timezone_at` means "no country here".

    Land zones are always ``Area/City`` names; ``timezone_at`` answers ``Etc/…`` only over
    international waters. ``Antarctica/…`` zones, and any point south of 60° S when
    ``lat`` is given (the tz data assigns some of Antarctica to other zones), count too:
    no store is there, so such a point is a hint that lat and lng were swapped.
    """
    if lat is not None and lat < ANTARCTIC_LAT:
        return True
    if not tz_name:
        return True
    return tz_name.startswith(("Etc/", "Antarctica/")) or tz_name in {"UTC", "GMT"}
