"""Streaming parsers for the geofence files marketers upload (DESIGN §6): CSV and GeoJSON.

Each parser yields one :class:`ParsedRow` per good row and one or more :class:`RowError`
per bad row, in file order, and raises :class:`FileError` for a problem with the whole
file (empty, wrong encoding, no header, missing column, not a FeatureCollection, …).

Memory stays flat however long the file is: the CSV is decoded line by line and the
GeoJSON is read feature by feature with ijson. The one thing that grows is the table of
store ids already seen (for duplicates), kept at about 20 bytes per row.

A ``FileError`` can come before the first row (header, encoding of the first bytes) or
after some rows were yielded (bad bytes further down, truncated JSON), so an importer
must read to the end before it writes anything.

For GeoJSON there are no line numbers: errors carry the 1-based feature number in both
``feature`` and ``line``.
"""

from __future__ import annotations

import csv
import itertools
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal

import ijson
import numpy as np
import shapely
from shapely.geometry import shape
from shapely.validation import explain_validity

from geofences.model import (
    DEFAULT_RADIUS_M,
    MAX_POLYGON_AREA_M2,
    MAX_POLYGON_EXTENT_M,
    MAX_POLYGON_VERTICES,
    MAX_RADIUS_M,
    MIN_RADIUS_M,
    FenceRecord,
)
from geofences.sphere import EARTH_RADIUS_M
from geofences.timezones import (
    ANTARCTIC_LAT,
    is_open_sea_or_antarctica,
    is_valid_timezone,
    timezone_at,
)
from geofences.units import parse_unit, to_metres, unit_aliases

__all__ = [
    "MAX_STORE_ID_LENGTH",
    "FileError",
    "ParsedRow",
    "RowError",
    "iter_csv",
    "iter_fences",
    "iter_geojson",
]

MAX_STORE_ID_LENGTH = 128
MAX_NAME_LENGTH = 200
MAX_ADDRESS_LENGTH = 500
MAX_TAG_LENGTH = 128
MAX_TAGS = 100
MAX_EXTRA_KEYS = 100
#: Below this |lat| the "point is at sea, swapped point is on land" test runs; polar test
#: fences above it are left alone.
SWAP_SEA_TEST_MAX_ABS_LAT = 85.0

_HEAD_BYTES = 64 * 1024
_CHUNK_BYTES = 64 * 1024
# A physical CSV line longer than this is not a store row: refuse instead of buffering it.
_MAX_LINE_BYTES = 1024 * 1024

_NUMBER_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Free text (address, extra values) may hold tabs and line breaks; nothing else of C0/C1.
# PostgreSQL refuses NUL in text and \u0000 in jsonb.
_TEXT_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_HEADER_SPACES_RE = re.compile(r"[\s\-]+")


# ---------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class RowError:
    """What is wrong with one row (or, with ``line=None``, with the whole file).

    ``line`` is the physical line where a CSV row starts (the header is line 1); for
    GeoJSON it is the 1-based feature number, also given as ``feature``.
    """

    line: int | None
    store_id: str | None
    field: str | None
    reason: str
    feature: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The ``details[]`` entry of a 422 answer (``feature`` only for GeoJSON)."""
        out: dict[str, Any] = {
            "line": self.line,
            "store_id": self.store_id,
            "field": self.field,
            "reason": self.reason,
        }
        if self.feature is not None:
            out["feature"] = self.feature
        return out


@dataclass(frozen=True, slots=True)
class ParsedRow:
    """A valid row: where it was (line, or feature number for GeoJSON) and its fence."""

    line: int
    record: FenceRecord


class FileError(ValueError):
    """The file as a whole cannot be read; ``errors`` holds the reason(s) as RowErrors."""

    def __init__(
        self,
        reason: str,
        *,
        line: int | None = None,
        field: str | None = None,
        errors: list[RowError] | None = None,
    ) -> None:
        self.errors: list[RowError] = errors or [RowError(line, None, field, reason)]
        super().__init__("; ".join(e.reason for e in self.errors))


# ---------------------------------------------------------------- store id bookkeeping


class _SeenIds:
    """store_id -> the line it was first seen on.

    Exact on purpose: a hashed fingerprint table would use less memory, but could report a
    real store as a duplicate. A million ids cost roughly 100 MB here, once per import.
    """

    __slots__ = ("_first",)

    def __init__(self) -> None:
        self._first: dict[str, int] = {}

    def add(self, store_id: str, line: int) -> int | None:
        """Record ``store_id`` at ``line``; if it was seen before, return its first line."""
        first = self._first.setdefault(store_id, line)
        return None if first == line else first


# ------------------------------------------------------------------- bytes in, sniffing


class _Source:
    """A binary stream whose first bytes were read ahead (to sniff format and encoding)."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        parts: list[bytes] = []
        size = 0
        while size < _HEAD_BYTES:
            data = stream.read(_HEAD_BYTES - size)
            if not data:
                break
            if not isinstance(data, bytes | bytearray | memoryview):
                raise TypeError("geofence files must be opened in binary mode ('rb')")
            parts.append(bytes(data))
            size += len(data)
        self.head = b"".join(parts)
        self.at_eof = size < _HEAD_BYTES
        self._pos = 0

    @property
    def unread_head(self) -> bytes:
        """The part of the head not consumed yet."""
        return self.head[self._pos :]

    def skip(self, count: int) -> None:
        """Drop ``count`` bytes of the head (a BOM)."""
        self._pos += count

    def read(self, size: int = -1) -> bytes:
        """File-like read, so ijson can pull from the head and then the stream."""
        if size == 0:
            return b""
        if self._pos < len(self.head):
            end = len(self.head) if size < 0 else self._pos + size
            data = self.head[self._pos : end]
            self._pos += len(data)
            return data
        if self.at_eof:
            return b""
        data = self._stream.read(size if size > 0 else _CHUNK_BYTES)
        return bytes(data) if data else b""

    def chunks(self) -> Iterator[bytes]:
        while data := self.read(_CHUNK_BYTES):
            yield data


_BOMS: tuple[tuple[bytes, str], ...] = (
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\xfe\xff", "UTF-16"),
    (b"\xff\xfe", "UTF-16"),
)
_UTF8_BOM = b"\xef\xbb\xbf"


def _not_utf8(what: str) -> FileError:
    return FileError(f"file is not UTF-8 text ({what}); save it as UTF-8")


def _check_head(source: _Source) -> None:
    """Refuse empty, binary and non-UTF-8 files from their first bytes; skip a UTF-8 BOM."""
    head = source.head
    if not head.strip() and source.at_eof:
        raise FileError("file is empty")
    for bom, encoding in _BOMS:
        if head.startswith(bom):
            raise _not_utf8(f"it looks like {encoding}")
    if head.startswith(b"PK\x03\x04"):
        raise FileError("file is a ZIP archive (an Excel .xlsx workbook?); export it as CSV UTF-8")
    if head.startswith(b"\xd0\xcf\x11\xe0"):
        raise FileError("file is an Excel .xls workbook; export it as CSV UTF-8")
    nuls = head.count(0)
    if nuls:
        # UTF-16 text without a BOM has a NUL beside almost every ASCII character, all at
        # even offsets (big-endian) or all at odd ones (little-endian); a binary file's NULs
        # fall anywhere.
        even, odd = head[0::2].count(0), head[1::2].count(0)
        if max(even, odd) * 3 >= len(head) and min(even, odd) * 20 <= max(even, odd):
            raise _not_utf8("it looks like UTF-16")
        raise FileError(
            f"file is binary, not CSV or GeoJSON text (NUL bytes, the first at byte offset "
            f"{head.index(0)}); upload a .csv or .geojson file saved as UTF-8"
        )
    if head.startswith(_UTF8_BOM):
        source.skip(len(_UTF8_BOM))


def _latin1_hint(raw: bytes) -> str:
    try:
        raw.decode("cp1252")
    except UnicodeDecodeError:
        return ""
    return "; it looks like Latin-1 / Windows-1252"


def _detect_format(source: _Source, filename: str | None) -> Literal["csv", "geojson"]:
    if filename:
        name = filename.rsplit("/", 1)[-1].rsplit("\\", 1)[-1].lower()
        ext = name.rsplit(".", 1)[-1] if "." in name else ""
        if ext == "csv":
            return "csv"
        if ext in ("geojson", "json"):
            return "geojson"
        if ext and ext != "txt":
            raise FileError(f"unsupported file type '.{ext}' (upload a .csv or a .geojson file)")
    first = source.unread_head.lstrip()[:1]
    return "geojson" if first in (b"{", b"[") else "csv"


# --------------------------------------------------------------------- shared checks


def _fmt(value: float) -> str:
    return f"{value:.15g}"


def _number(value: object, field: str) -> float | str:
    """The float in ``value``, or the reason it is not one."""
    if value is None:
        return f"{field} is empty"
    if isinstance(value, bool):
        return f"{field} {value!r} is not a number"
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            return f"{field} is empty"
        # Python's float() also takes '1_000', 'nan' and 'infinity'; a file should not.
        if not _NUMBER_RE.fullmatch(text):
            lowered = text.lower().lstrip("+-")
            if lowered in ("nan", "inf", "infinity"):
                return f"{field} {text!r} is not a finite number"
            return f"{field} {text!r} is not a number"
        number = float(text)
    else:
        return f"{field} {value!r} is not a number"
    if not math.isfinite(number):
        return f"{field} {value!r} is not a finite number"
    return number


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return ""


def _store_id_problem(store_id: str) -> str | None:
    if not store_id:
        return "store_id is empty"
    if len(store_id) > MAX_STORE_ID_LENGTH:
        return f"store_id is {len(store_id)} characters long (at most {MAX_STORE_ID_LENGTH})"
    if _CONTROL_RE.search(store_id):
        return "store_id contains a control character"
    if "/" in store_id:
        return "store_id contains '/' (it is used in URLs)"
    return None


def _normalise_key(name: str) -> str:
    return _HEADER_SPACES_RE.sub("_", name.strip().lower())


_FIELD_ALIASES: dict[str, str] = {
    "store_id": "store_id",
    "name": "name",
    "lat": "lat",
    "latitude": "lat",
    "lng": "lng",
    "lon": "lng",
    "long": "lng",
    "longitude": "lng",
    "radius": "radius",
    "radius_unit": "radius_unit",
    "tags": "tags",
    "timezone": "timezone",
    "time_zone": "timezone",
    "tz": "timezone",
    "address": "address",
}
# radius_m, radius_yd, radius_ft, and the same for every unit spelling (radius_km, …):
# a radius column must never end up unread in `extra` while the default applies.
_RADIUS_COLUMNS: dict[str, str] = {f"radius_{a}": parse_unit(a) for a in unit_aliases()}


def _canonical(key: str) -> str | None:
    """The field a header/property name stands for, or None for an extra column."""
    norm = _normalise_key(key)
    if norm in _RADIUS_COLUMNS:
        return norm
    return _FIELD_ALIASES.get(norm)


class _Row:
    """Collects the errors of one row while its fields are checked."""

    __slots__ = ("errors", "feature", "line", "store_id")

    def __init__(self, line: int, feature: int | None) -> None:
        self.line = line
        self.feature = feature
        self.store_id: str | None = None
        self.errors: list[RowError] = []

    def error(self, field: str | None, reason: str) -> None:
        self.errors.append(RowError(self.line, self.store_id, field, reason, self.feature))


def _check_store_id(row: _Row, raw: object, seen: _SeenIds, where: str) -> str:
    if raw is None:
        row.error("store_id", "store_id is missing")
        return ""
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        row.error("store_id", "store_id must be a string")
        return ""
    store_id = _text(raw)
    problem = _store_id_problem(store_id)
    row.store_id = store_id or None
    if problem:
        row.error("store_id", problem)
        return store_id
    first = seen.add(store_id, row.line)
    if first is not None:
        row.error("store_id", f"duplicate store_id, first seen on {where} {first}")
    return store_id


def _control_problem(field: str, text: str, pattern: re.Pattern[str]) -> str | None:
    bad = pattern.search(text)
    if bad is None:
        return None
    return f"{field} contains control character U+{ord(bad[0]):04X}"


def _check_name(row: _Row, raw: object, missing: str) -> str:
    name = _text(raw)
    if not name:
        row.error("name", missing)
    elif len(name) > MAX_NAME_LENGTH:
        row.error("name", f"name is {len(name)} characters long (at most {MAX_NAME_LENGTH})")
    elif problem := _control_problem("name", name, _CONTROL_RE):
        row.error("name", problem)
    return name


def _check_address(row: _Row, raw: object) -> str | None:
    address = _text(raw)
    if len(address) > MAX_ADDRESS_LENGTH:
        row.error(
            "address", f"address is {len(address)} characters long (at most {MAX_ADDRESS_LENGTH})"
        )
    elif problem := _control_problem("address", address, _TEXT_CONTROL_RE):
        row.error("address", problem)
    return address or None


def _check_extra(row: _Row, extra: Mapping[str, Any]) -> None:
    """Extra columns/properties are kept as JSON: no control characters in keys or text."""
    if len(extra) > MAX_EXTRA_KEYS:
        row.error(None, f"{len(extra)} extra columns or properties (at most {MAX_EXTRA_KEYS})")
        return
    stack: list[tuple[str, object]] = list(extra.items())
    while stack:
        key, value = stack.pop()
        problem = _control_problem(key, key, _TEXT_CONTROL_RE)
        if problem is None and isinstance(value, str):
            problem = _control_problem(key, value, _TEXT_CONTROL_RE)
        if problem is not None:
            row.error(key.split(".", 1)[0], problem)
            return
        if isinstance(value, dict):
            stack.extend((f"{key}.{k}", v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((f"{key}.{i}", v) for i, v in enumerate(value))


def _check_coordinate(row: _Row, raw: object, field: str) -> float | None:
    value = _number(raw, field)
    if isinstance(value, str):
        row.error(field, value)
        return None
    return value


def _check_ranges(row: _Row, lat: float, lng: float, hint: str) -> bool:
    ok = True
    if not -90.0 <= lat <= 90.0:
        ok = False
        if abs(lng) <= 90.0:
            row.error("lat", f"lat {_fmt(lat)} is out of range; lat and lng look swapped{hint}")
        else:
            row.error("lat", f"lat {_fmt(lat)} is out of range [-90, 90]")
    if not -180.0 <= lng <= 180.0:
        ok = False
        row.error("lng", f"lng {_fmt(lng)} is out of range [-180, 180]")
    return ok


def _swap_check(row: _Row, lat: float, lng: float, given_tz: str | None, hint: str) -> str:
    """Flag a point whose lat and lng look swapped; return the point's time zone."""
    point_tz = timezone_at(lat, lng)
    if given_tz == point_tz or abs(lng) > 90.0:
        return point_tz
    swapped = f"lat {_fmt(lng)}, lng {_fmt(lat)}"
    if given_tz is not None:
        swapped_tz = timezone_at(lng, lat)
        if given_tz == swapped_tz:
            row.error(
                "lat",
                f"lat {_fmt(lat)}, lng {_fmt(lng)} is in {point_tz} but the row's timezone "
                f"{given_tz} is where ({swapped}) is; lat and lng look swapped{hint}",
            )
            return point_tz
    if abs(lat) <= SWAP_SEA_TEST_MAX_ABS_LAT and is_open_sea_or_antarctica(point_tz, lat):
        swapped_tz = timezone_at(lng, lat)
        if not is_open_sea_or_antarctica(swapped_tz, lng):
            place = (
                "Antarctica"
                if lat < ANTARCTIC_LAT or point_tz.startswith("Antarctica/")
                else "the open sea"
            )
            row.error(
                "lat",
                f"lat {_fmt(lat)}, lng {_fmt(lng)} is in {place} while ({swapped}) is on land "
                f"({swapped_tz}); lat and lng look swapped{hint}",
            )
    return point_tz


def _check_timezone(row: _Row, raw: object) -> str | None:
    if raw is not None and not isinstance(raw, str):
        row.error("timezone", f"timezone {raw!r} is not a time zone name")
        return None
    name = _text(raw)
    if not name:
        return None
    if _CONTROL_RE.search(name) or not is_valid_timezone(name):
        row.error("timezone", f"unknown time zone {name!r} (use an IANA name like Europe/Paris)")
        return None
    return name


def _check_tags(row: _Row, raw: object) -> tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        parts: Sequence[object] = raw.split(";")
    elif isinstance(raw, list):
        parts = raw
    else:
        row.error("tags", "tags must be a list of strings or a ';'-separated string")
        return ()
    tags: dict[str, None] = {}
    for part in parts:
        if not isinstance(part, str):
            row.error("tags", f"tag {part!r} is not a string")
            continue
        if tag := part.strip():
            if len(tag) > MAX_TAG_LENGTH:
                row.error("tags", f"a tag is {len(tag)} characters long (at most {MAX_TAG_LENGTH})")
                return ()
            if problem := _control_problem("a tag", tag, _CONTROL_RE):
                row.error("tags", problem)
                return ()
            tags[tag] = None
    if len(tags) > MAX_TAGS:
        row.error("tags", f"{len(tags)} tags (at most {MAX_TAGS})")
        return ()
    return tuple(tags)


def _check_radius(row: _Row, given: list[tuple[str, object]], unit_raw: object) -> float | None:
    """Radius in metres from the radius fields present (name, value); default when none."""
    present = [(name, value) for name, value in given if _text(value) or _is_number(value)]
    unit_text = _text(unit_raw)
    unit: str | None = None
    if unit_text:
        try:
            unit = parse_unit(unit_text)
        except ValueError as exc:
            row.error("radius_unit", str(exc))
            return None
    if not present:
        return DEFAULT_RADIUS_M
    if len(present) > 1:
        listed = ", ".join(f"{name}={_text(value) or repr(value)}" for name, value in present)
        row.error(present[1][0], f"more than one radius given ({listed}); give one")
        return None
    name, raw = present[0]
    value = _number(raw, name)
    if isinstance(value, str):
        row.error(name, value)
        return None
    if name == "radius":
        if unit is None:
            row.error(
                "radius_unit",
                "radius_unit is empty; say which unit radius is in (m, yd, ft, km or mi)",
            )
            return None
    else:
        unit = _RADIUS_COLUMNS[name]
    metres = to_metres(value, unit)
    if not MIN_RADIUS_M <= metres <= MAX_RADIUS_M:
        shown = f"{_fmt(value)} {unit}" + ("" if unit == "m" else f" = {_fmt(metres)} m")
        row.error(name, f"radius {shown} is outside 10 m..10 km")
        return None
    return metres


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# -------------------------------------------------------------------------------- CSV


def _csv_lines(source: _Source) -> Iterator[str]:
    """Decoded physical lines (endings kept), each checked as UTF-8 on its own.

    Decoding line by line is what lets a stray Latin-1 byte be reported with its line
    instead of as a UnicodeDecodeError somewhere in a 64 KiB buffer. ``\\r``, ``\\n`` and
    ``\\r\\n`` all end a line (Excel for Mac writes bare ``\\r``).
    """
    pending = b""
    offset = source._pos  # byte offset in the file of pending[0] (after a BOM)
    line_no = 0
    for chunk in source.chunks():
        data = pending + chunk if pending else chunk
        lines = data.splitlines(keepends=True)
        last = lines[-1]
        # An unterminated last piece, or one ending in \r that may be half of \r\n, waits
        # for the next chunk.
        pending = lines.pop() if not last.endswith(b"\n") else b""
        if len(pending) > _MAX_LINE_BYTES:
            raise FileError(
                f"line {line_no + len(lines) + 1} is longer than 1 MiB; is this a CSV file?",
                line=line_no + len(lines) + 1,
            )
        for raw in lines:
            line_no += 1
            yield _decode_line(raw, line_no, offset)
            offset += len(raw)
    if pending:
        yield _decode_line(pending, line_no + 1, offset)


def _decode_line(raw: bytes, line_no: int, offset: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = raw[exc.start]
        raise FileError(
            f"file is not UTF-8 text: line {line_no} has byte 0x{bad:02X} at byte offset "
            f"{offset + exc.start}{_latin1_hint(raw)}; save it as UTF-8",
            line=line_no,
        ) from None


@dataclass(frozen=True, slots=True)
class _CsvPlan:
    """Which column holds what, decided once from the header."""

    width: int
    fields: dict[str, int]  # canonical field -> column index
    radius_columns: list[tuple[str, int]]  # (canonical radius field, column index)
    extra: list[tuple[str, int, bool]]  # (key in record.extra, column index, keep if empty)


def _plan_csv(header: list[str]) -> _CsvPlan:
    shown = ", ".join(h.strip() for h in header)
    fields: dict[str, int] = {}
    radius_columns: list[tuple[str, int]] = []
    extra: list[tuple[str, int, bool]] = []
    seen_names: dict[str, str] = {}
    for index, name in enumerate(header):
        key = name.strip()
        canonical = _canonical(key)
        if canonical is None:
            extra_key = key or f"column_{index + 1}"
            if extra_key in seen_names:
                raise FileError(f"column {extra_key!r} appears twice (header has: {shown})")
            seen_names[extra_key] = key
            # A nameless column (a trailing comma in the header) is kept only where it
            # holds something.
            extra.append((extra_key, index, bool(key)))
            continue
        if canonical in seen_names:
            raise FileError(
                f"column {canonical!r} appears twice (as {seen_names[canonical]!r} and "
                f"{key!r}; header has: {shown})"
            )
        seen_names[canonical] = key
        if canonical in _RADIUS_COLUMNS or canonical == "radius":
            radius_columns.append((canonical, index))
        else:
            fields[canonical] = index
    missing = [f for f in ("store_id", "name", "lat", "lng") if f not in fields]
    if missing:
        errors = [
            RowError(1, None, f, f"missing required column {f!r} (header has: {shown})")
            for f in missing
        ]
        raise FileError(errors[0].reason, errors=errors)
    has_radius = any(name == "radius" for name, _ in radius_columns)
    if has_radius and "radius_unit" not in fields:
        raise FileError(
            "column 'radius' needs a 'radius_unit' column (m, yd, ft, km or mi); "
            f"or name it radius_m, radius_yd or radius_ft (header has: {shown})"
        )
    if "radius_unit" in fields and not has_radius:
        raise FileError(f"column 'radius_unit' needs a 'radius' column (header has: {shown})")
    return _CsvPlan(len(header), fields, radius_columns, extra)


def iter_csv(stream: BinaryIO) -> Iterator[ParsedRow | RowError]:
    """Parse a geofence CSV, yielding a ParsedRow or RowError(s) per row, in file order.

    File-level problems found in the first bytes or the header raise :class:`FileError`
    right away; later ones (bad bytes further down) raise it while iterating.

    >>> import io
    >>> rows = list(iter_csv(io.BytesIO(b"store_id,name,lat,lng,radius_yd\\n"
    ...                                 b"s1,Main St,40.7128,-74.006,100\\n")))
    >>> rows[0].record.radius_m, rows[0].record.timezone
    (91.44, 'America/New_York')
    """
    source = _Source(stream)
    _check_head(source)
    return _iter_csv(source)


def _iter_csv(source: _Source) -> Iterator[ParsedRow | RowError]:
    """Read the header now (so its problems raise at once); rows come from the generator."""
    reader = csv.reader(_csv_lines(source), strict=True)
    rows = _csv_records(reader)
    try:
        header = next(rows)
    except StopIteration:
        raise FileError("file is empty") from None
    return _csv_rows(rows, _plan_csv(header[1]))


def _csv_records(reader: Any) -> Iterator[tuple[int, list[str]]]:
    """(first physical line, cells) of every CSV record that has any content."""
    line_before = 0
    try:
        for cells in reader:
            start = line_before + 1
            line_before = reader.line_num
            # Blank lines and Excel's trailing ",,,," rows carry nothing.
            if any(c.strip() for c in cells):
                yield start, cells
    except csv.Error as exc:
        raise FileError(
            f"line {reader.line_num}: malformed CSV ({exc})", line=reader.line_num
        ) from None


def _csv_rows(
    rows: Iterator[tuple[int, list[str]]], plan: _CsvPlan
) -> Iterator[ParsedRow | RowError]:
    seen = _SeenIds()
    for line, cells in rows:
        yield from _csv_row(plan, cells, line, seen)


def _csv_row(
    plan: _CsvPlan, cells: list[str], line: int, seen: _SeenIds
) -> Iterator[ParsedRow | RowError]:
    row = _Row(line, None)
    if len(cells) > plan.width:
        row.error(
            None,
            f"row has {len(cells)} fields but the header has {plan.width} "
            "(a comma in an unquoted value?)",
        )
    # Spreadsheet tools drop trailing empty cells: a short row reads as empty values.
    cells = cells + [""] * (plan.width - len(cells))

    def cell(field: str) -> str | None:
        index = plan.fields.get(field)
        return None if index is None else cells[index]

    store_id = _check_store_id(row, cell("store_id"), seen, "line")
    name = _check_name(row, cell("name"), "name is empty")
    given_tz = _check_timezone(row, cell("timezone"))
    radius = _check_radius(
        row, [(f, cells[i]) for f, i in plan.radius_columns], cell("radius_unit")
    )
    tags = _check_tags(row, cell("tags"))
    address = _check_address(row, cell("address"))
    extra = {key: cells[i] for key, i, keep_empty in plan.extra if keep_empty or cells[i]}
    _check_extra(row, extra)
    lat = _check_coordinate(row, cell("lat"), "lat")
    lng = _check_coordinate(row, cell("lng"), "lng")
    timezone = given_tz
    if lat is not None and lng is not None and _check_ranges(row, lat, lng, ""):
        point_tz = _swap_check(row, lat, lng, given_tz, "")
        timezone = given_tz or point_tz
    if row.errors:
        yield from _sorted(row.errors)
        return
    assert lat is not None and lng is not None and radius is not None and timezone
    yield ParsedRow(
        line,
        FenceRecord(
            store_id=store_id,
            name=name,
            lat=lat,
            lng=lng,
            radius_m=radius,
            tags=tags,
            timezone=timezone,
            address=address,
            extra=extra,
        ),
    )


_FIELD_ORDER = {
    f: i
    for i, f in enumerate(
        (None, "type", "store_id", "name", "lat", "lng", "geometry", "radius_unit", "timezone")
    )
}


def _sorted(errors: list[RowError]) -> list[RowError]:
    # Report a row's errors in column order, whatever order the checks ran in.
    return sorted(errors, key=lambda e: _FIELD_ORDER.get(e.field, len(_FIELD_ORDER)))


# ---------------------------------------------------------------------------- GeoJSON


def iter_geojson(stream: BinaryIO) -> Iterator[ParsedRow | RowError]:
    """Parse a GeoJSON FeatureCollection of store fences, one feature at a time.

    Point features are circles (radius from ``radius_m``/``radius_yd``/``radius_ft`` or
    ``radius`` + ``radius_unit``, else 50 yd); Polygon/MultiPolygon features are used as
    drawn. Errors give the 1-based feature number as both ``feature`` and ``line``.
    """
    source = _Source(stream)
    _check_head(source)
    _check_json_head(source)
    return _iter_geojson(source)


def _check_json_head(source: _Source) -> None:
    head = source.unread_head
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.end < len(head) or source.at_eof:  # not just a character cut by the head
            raise _not_utf8(
                f"byte 0x{head[exc.start]:02X} at byte offset {source._pos + exc.start}"
                f"{_latin1_hint(head)}"
            ) from None


def _json_failure(exc: Exception) -> FileError:
    message = exc.args[0] if exc.args else str(exc)
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    first = str(message).strip().split("\n", 1)[0]
    if "premature EOF" in first:
        return FileError(f"file is not valid JSON: it ends too early (truncated?): {first}")
    if "UTF8" in first:
        return _not_utf8(first)
    return FileError(f"file is not valid JSON: {first}")


def _iter_geojson(source: _Source) -> Iterator[ParsedRow | RowError]:
    events = ijson.parse(source, use_float=True)
    top_type: object = None
    saw_features = False
    seen = _SeenIds()
    number = 0
    try:
        for prefix, event, value in events:
            if prefix == "":
                if event == "start_array":
                    raise FileError(
                        "file is JSON but not a GeoJSON FeatureCollection (it is a list)"
                    )
                if event not in ("start_map", "end_map", "map_key"):
                    raise FileError("file is JSON but not a GeoJSON FeatureCollection")
            elif prefix == "type":
                top_type = value
                if value != "FeatureCollection":
                    raise FileError(f"file is GeoJSON of type {value!r}, not a FeatureCollection")
            elif prefix == "features":
                if event == "start_array":
                    saw_features = True
                elif event != "end_array":
                    raise FileError("'features' must be a list of features")
            elif prefix == "features.item":
                number += 1
                item = _build_item(event, value, events)
                yield from _feature(item, number, seen)
    except (ijson.JSONError, UnicodeDecodeError) as exc:
        raise _json_failure(exc) from None
    if number == 0 and top_type is None and not saw_features:
        raise FileError("file is JSON but not a GeoJSON FeatureCollection (no 'features')")
    if top_type is None:
        raise FileError('file has no "type": "FeatureCollection"')
    if not saw_features:
        raise FileError("FeatureCollection has no 'features' list")


def _build_item(event: str, value: object, events: Iterator[tuple[str, str, Any]]) -> Any:
    """Assemble one array item from ijson events (only this item is ever in memory)."""
    builder = ijson.ObjectBuilder()
    builder.event(event, value)
    depth = 1 if event in ("start_map", "start_array") else 0
    while depth:
        _, event, value = next(events)
        if event in ("start_map", "start_array"):
            depth += 1
        elif event in ("end_map", "end_array"):
            depth -= 1
        builder.event(event, value)
    return builder.value


_POLYGON_TYPES = ("Polygon", "MultiPolygon")


def _feature(item: object, number: int, seen: _SeenIds) -> Iterator[ParsedRow | RowError]:
    row = _Row(number, number)
    if not isinstance(item, dict) or item.get("type") != "Feature":
        kind = item.get("type") if isinstance(item, dict) else type(item).__name__
        row.error("type", f"feature {number} is not a GeoJSON Feature (type {kind!r})")
        yield from row.errors
        return
    props_raw = item.get("properties")
    if props_raw is not None and not isinstance(props_raw, dict):
        row.error("properties", "properties must be an object")
        props_raw = {}
    props: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in (props_raw or {}).items():
        canonical = _canonical(key)
        if canonical is None:
            extra[key] = value
        elif canonical in props:
            row.error(canonical, f"property {canonical!r} is given twice (as {key!r})")
        else:
            props[canonical] = value
    if "id" in item and "feature_id" not in extra:
        extra["feature_id"] = item["id"]

    store_id = _check_store_id(row, props.get("store_id"), seen, "feature")
    missing = "name is empty" if "name" in props else "properties.name is missing"
    name = _check_name(row, props.get("name"), missing)
    given_tz = _check_timezone(row, props.get("timezone"))
    tags = _check_tags(row, props.get("tags"))
    address = _check_address(row, props.get("address"))
    _check_extra(row, extra)
    radius_given = [(k, v) for k, v in props.items() if k == "radius" or k in _RADIUS_COLUMNS]

    geometry = item.get("geometry")
    gtype = geometry.get("type") if isinstance(geometry, dict) else None
    hint = " (GeoJSON positions are [lng, lat])"
    lat: float | None = None
    lng: float | None = None
    radius: float | None = None
    polygon: dict[str, Any] | None = None
    if not isinstance(geometry, dict):
        row.error("geometry", "feature has no geometry")
    elif gtype == "Point":
        radius = _check_radius(row, radius_given, props.get("radius_unit"))
        for key in ("lat", "lng"):
            if key in props:  # a circle's point is its position; keep, never drop
                extra[key] = props[key]
        position = _position(row, geometry.get("coordinates"), "geometry")
        if position is not None:
            lng, lat = position  # GeoJSON order: [lng, lat]
    elif gtype in _POLYGON_TYPES:
        for key, value in radius_given:
            if _text(value) or _is_number(value):
                row.error(
                    key, f"a radius is not allowed on a {gtype} feature (its shape is the fence)"
                )
        if _text(props.get("radius_unit")):
            row.error("radius_unit", f"radius_unit is not allowed on a {gtype} feature")
        checked = _polygon(row, geometry, str(gtype))
        if checked is not None:
            polygon, geom = checked
            lat, lng = _polygon_point(row, props, geom)
    else:
        row.error(
            "geometry",
            f"unsupported geometry type {gtype!r} (use Point with a radius, Polygon or "
            "MultiPolygon)",
        )

    timezone = given_tz
    if lat is not None and lng is not None and _check_ranges(row, lat, lng, hint):
        point_tz = _swap_check(row, lat, lng, given_tz, hint)
        timezone = given_tz or point_tz
    if row.errors:
        yield from _sorted(row.errors)
        return
    assert lat is not None and lng is not None and timezone
    yield ParsedRow(
        number,
        FenceRecord(
            store_id=store_id,
            name=name,
            lat=lat,
            lng=lng,
            radius_m=radius,
            geometry=polygon,
            tags=tags,
            timezone=timezone,
            address=address,
            extra=extra,
        ),
    )


def _position(row: _Row, raw: object, where: str) -> tuple[float, float] | None:
    """``(lng, lat)`` of a GeoJSON position, or None after reporting why it is unusable."""
    if not isinstance(raw, list) or len(raw) < 2:
        row.error("geometry", f"{where}: a position must be [lng, lat], got {raw!r}"[:200])
        return None
    lng = _number(raw[0], "lng")
    lat = _number(raw[1], "lat")
    if isinstance(lng, str) or isinstance(lat, str):
        reason = lng if isinstance(lng, str) else lat
        row.error("geometry", f"{where}: {reason}")
        return None
    return lng, lat


def _polygon(
    row: _Row, geometry: Mapping[str, Any], gtype: str
) -> tuple[dict[str, Any], shapely.Geometry] | None:
    """Check a Polygon/MultiPolygon's rings and validity; return it 2-D and as shapely."""
    coordinates = geometry.get("coordinates")
    polygons = [coordinates] if gtype == "Polygon" else coordinates
    if not isinstance(polygons, list) or not polygons:
        row.error("geometry", f"{gtype} has no coordinates")
        return None
    errors_before = len(row.errors)
    vertices = sum(
        len(ring)
        for rings in polygons
        if isinstance(rings, list)
        for ring in rings
        if isinstance(ring, list)
    )
    if vertices > MAX_POLYGON_VERTICES:
        row.error(
            "geometry",
            f"{gtype} has {vertices} positions (at most {MAX_POLYGON_VERTICES}); simplify it",
        )
        return None
    clean: list[list[list[list[float]]]] = []
    lat_over = False
    lng_within = True
    for p, rings in enumerate(polygons, 1):
        label = f"polygon {p} " if gtype == "MultiPolygon" else ""
        if not isinstance(rings, list) or not rings:
            row.error("geometry", f"{label}has no rings".strip())
            continue
        clean_rings: list[list[list[float]]] = []
        for r, ring in enumerate(rings, 1):
            where = f"{label}{'outer ring' if r == 1 else f'hole {r - 1}'}"
            if not isinstance(ring, list):
                row.error("geometry", f"{where} is not a list of positions")
                continue
            positions: list[list[float]] = []
            for i, raw in enumerate(ring, 1):
                pos = _position(row, raw, f"{where} position {i}")
                if pos is None:
                    break
                lng, lat = pos
                lat_over = lat_over or abs(lat) > 90.0
                lng_within = lng_within and abs(lng) <= 90.0
                if abs(lat) > 90.0 or abs(lng) > 180.0:
                    axis, value, limit = ("lat", lat, 90) if abs(lat) > 90.0 else ("lng", lng, 180)
                    row.error(
                        "geometry",
                        f"{where} position {i}: {axis} {_fmt(value)} is out of range "
                        f"[-{limit}, {limit}]",
                    )
                    break
                positions.append([lng, lat])
            else:
                if len(positions) < 4:
                    row.error(
                        "geometry",
                        f"{where} has {len(positions)} positions; a closed ring needs at "
                        "least 4 (the last repeating the first)",
                    )
                elif positions[0] != positions[-1]:
                    row.error(
                        "geometry",
                        f"{where} is not closed: its last position must repeat the first",
                    )
                clean_rings.append(positions)
        clean.append(clean_rings)
    if lat_over and lng_within:
        row.error("geometry", "positions look like [lat, lng]; GeoJSON positions are [lng, lat]")
    if len(row.errors) > errors_before:
        return None
    normalised: dict[str, Any] = {
        "type": gtype,
        "coordinates": clean[0] if gtype == "Polygon" else clean,
    }
    geom = shape(normalised)
    if not geom.is_valid:
        why = explain_validity(geom)
        if "Self-intersection" in why:
            row.error("geometry", f"self-intersecting polygon: {why}")
        else:
            row.error("geometry", f"invalid polygon: {why}")
        return None
    problem = _polygon_size_problem(clean, geom)
    if problem is not None:
        row.error("geometry", problem)
        return None
    return normalised, geom


def _polygon_size_problem(
    polygons: list[list[list[list[float]]]], geom: shapely.Geometry
) -> str | None:
    """Why a polygon is too large for a store fence (extent, then area), or None.

    North-south and east-west extent on the sphere (east-west at the latitude of the
    polygon nearest the equator, where it is widest). Each part spans its longitudes as
    drawn in the lng/lat plane; the parts together span the shortest arc covering them,
    so a fence split at ±180 is measured across the antimeridian. Area:
    the polygon as drawn in the lng/lat plane, measured equal-area (x = lng in radians,
    y = sin lat, times R²).
    """
    spans = sorted(
        (min(lngs), max(lngs))
        for rings in polygons
        if (lngs := [lng for ring in rings for lng, _ in ring])
    )
    merged = [list(spans[0])]
    for west, east in spans[1:]:
        if west <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], east)
        else:
            merged.append([west, east])
    gaps = [b[0] - a[1] for a, b in itertools.pairwise(merged)]
    lng_arc = 360.0 - max([*gaps, merged[0][0] + 360.0 - merged[-1][1]])
    lats = [lat for rings in polygons for ring in rings for _, lat in ring]
    south, north = min(lats), max(lats)
    widest = 0.0 if south <= 0.0 <= north else min(abs(south), abs(north))
    metres_per_degree = math.pi * EARTH_RADIUS_M / 180.0
    ns_m = (north - south) * metres_per_degree
    ew_m = lng_arc * metres_per_degree * math.cos(math.radians(widest))
    if max(ns_m, ew_m) > MAX_POLYGON_EXTENT_M:
        return (
            f"polygon spans {ns_m / 1000:,.1f} km north-south and {ew_m / 1000:,.1f} km "
            f"east-west; a fence spans at most {MAX_POLYGON_EXTENT_M / 1000:g} km either way"
        )
    equal_area = shapely.transform(
        geom, lambda xy: np.column_stack((np.radians(xy[:, 0]), np.sin(np.radians(xy[:, 1]))))
    )
    area_m2 = float(equal_area.area) * EARTH_RADIUS_M**2
    if area_m2 > MAX_POLYGON_AREA_M2:
        return (
            f"polygon covers {area_m2 / 1e6:,.1f} km²; a fence covers at most "
            f"{MAX_POLYGON_AREA_M2 / 1e6:,.1f} km² (a circle of 10 km)"
        )
    return None


def _polygon_point(
    row: _Row, props: Mapping[str, Any], geom: shapely.Geometry
) -> tuple[float | None, float | None]:
    """The store point of a polygon fence: ``lat``/``lng`` properties, else inside it."""
    has_lat = props.get("lat") not in (None, "")
    has_lng = props.get("lng") not in (None, "")
    if has_lat or has_lng:
        if not (has_lat and has_lng):
            row.error("lat" if not has_lat else "lng", "give both lat and lng, or neither")
            return None, None
        return (
            _check_coordinate(row, props.get("lat"), "lat"),
            _check_coordinate(row, props.get("lng"), "lng"),
        )
    point = geom.representative_point()
    return float(point.y), float(point.x)  # shapely x/y is lng/lat


# ---------------------------------------------------------------------------- sniffing


def iter_fences(stream: BinaryIO, filename: str | None = None) -> Iterator[ParsedRow | RowError]:
    """Parse a geofence upload as CSV or GeoJSON.

    The format comes from the file name's extension (``.csv``; ``.geojson``/``.json``),
    else from the first non-space byte (``{`` or ``[`` means JSON).
    """
    source = _Source(stream)
    _check_head(source)
    if _detect_format(source, filename) == "csv":
        return _iter_csv(source)
    _check_json_head(source)
    return _iter_geojson(source)
