"""Geofence upload parsing (DESIGN §6): units, time zones, CSV and GeoJSON, streaming."""

from __future__ import annotations

import io
import json
import math
import threading
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest

from geofences.model import DEFAULT_RADIUS_M, FenceRecord
from geofences.parsing import (
    FileError,
    ParsedRow,
    RowError,
    iter_csv,
    iter_fences,
    iter_geojson,
)
from geofences.sphere import EARTH_RADIUS_M
from geofences.timezones import (
    is_open_sea_or_antarctica,
    is_valid_timezone,
    nautical_timezone,
    timezone_at,
)
from geofences.units import parse_unit, to_metres

HEADER = "store_id,name,lat,lng"


def parse_csv(text: str | bytes) -> list[ParsedRow | RowError]:
    data = text.encode() if isinstance(text, str) else text
    return list(iter_csv(io.BytesIO(data)))


def records(results: list[ParsedRow | RowError]) -> dict[str, FenceRecord]:
    errors = [r for r in results if isinstance(r, RowError)]
    assert not errors, errors
    return {r.record.store_id: r.record for r in results if isinstance(r, ParsedRow)}


def errors_of(results: list[ParsedRow | RowError]) -> list[tuple[int | None, str | None, str]]:
    """(line, field, reason) of every error, for compact assertions."""
    return [(r.line, r.field, r.reason) for r in results if isinstance(r, RowError)]


def file_error(data: bytes, parse: Any = iter_csv, **kwargs: Any) -> FileError:
    with pytest.raises(FileError) as info:
        list(parse(io.BytesIO(data), **kwargs))
    assert info.value.errors, "a FileError always carries its reason(s)"
    return info.value


# ------------------------------------------------------------------------------ units


@pytest.mark.parametrize(
    ("text", "unit"),
    [
        ("m", "m"),
        (" Metres ", "m"),
        ("meter", "m"),
        ("YD", "yd"),
        ("yards", "yd"),
        ("feet", "ft"),
        ("Foot", "ft"),
        ("kilometre", "km"),
        ("Kilometers", "km"),
        ("mi", "mi"),
        ("MILES", "mi"),
    ],
)
def test_parse_unit_aliases(text: str, unit: str) -> None:
    assert parse_unit(text) == unit


def test_parse_unit_unknown() -> None:
    with pytest.raises(ValueError, match=r"^unknown unit 'furlong' \(use m, yd, ft, km or mi\)$"):
        parse_unit("furlong")


def test_to_metres_exact_factors() -> None:
    assert to_metres(50, "yd") == DEFAULT_RADIUS_M == 45.72
    assert to_metres(150, "ft") == 45.72  # a binary float product would be 45.720000000000006
    assert to_metres(1, "mi") == 1609.344
    assert to_metres("0.25", "km") == 250.0
    assert to_metres(12.5, "metres") == 12.5
    with pytest.raises(ValueError):
        to_metres(1, "cubit")


# -------------------------------------------------------------------------- timezones


@pytest.mark.parametrize(
    ("lat", "lng", "zone"),
    [
        (40.7128, -74.006, "America/New_York"),
        (35.6812, 139.7671, "Asia/Tokyo"),
        (-18.1416, 178.4419, "Pacific/Fiji"),  # Suva, west of the antimeridian
        (-18.0, -179.5, "Pacific/Fiji"),  # Fiji's Lau islands, east of it
    ],
)
def test_timezone_at_land(lat: float, lng: float, zone: str) -> None:
    assert timezone_at(lat, lng) == zone


def test_timezone_at_open_sea_is_nautical() -> None:
    zone = timezone_at(30.0, -150.0)  # mid Pacific
    assert zone == "Etc/GMT+10" == nautical_timezone(-150.0)
    assert is_open_sea_or_antarctica(zone)
    assert is_valid_timezone(zone)
    assert nautical_timezone(180.0) == "Etc/GMT-12"
    assert nautical_timezone(-180.0) == "Etc/GMT+12"


def test_is_open_sea_or_antarctica() -> None:
    assert is_open_sea_or_antarctica("Antarctica/McMurdo")
    assert is_open_sea_or_antarctica("Etc/GMT-3")
    assert is_open_sea_or_antarctica(None)
    assert is_open_sea_or_antarctica("Africa/Johannesburg", lat=-80.0)
    assert not is_open_sea_or_antarctica("Europe/Paris")


def test_is_valid_timezone() -> None:
    assert is_valid_timezone("Europe/Paris")
    assert is_valid_timezone("UTC")
    assert not is_valid_timezone("Europe/Pariss")
    assert not is_valid_timezone("")


def test_timezone_at_concurrent_first_use() -> None:
    results: list[str] = []
    threads = [
        threading.Thread(target=lambda: results.append(timezone_at(48.8566, 2.3522)))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["Europe/Paris"] * 8


# --------------------------------------------------------------------------- CSV: good


GOOD_CSV = """\
store_id,name,lat,lng,radius_m,radius_yd,radius_ft,radius,radius_unit,tags,address
ny-1,Times Square,40.758,-73.9855,,,,,,downtown; flagship ;;,1 Times Sq
tk-1,Shibuya,35.6595,139.7005,120,,,,,,
fj-1,Suva,-18.1416,178.4419,,100,,,,,
fj-2,Lau,-18.0,-179.5,,,300,,,,
km-1,Big box,51.5074,-0.1278,,,,0.5,km,,
mi-1,Outlet,34.0522,-118.2437,,,,1,Miles,,
"""


def test_csv_mixed_units_and_derived_timezones() -> None:
    got = records(parse_csv(GOOD_CSV))
    assert list(got) == ["ny-1", "tk-1", "fj-1", "fj-2", "km-1", "mi-1"]
    ny = got["ny-1"]
    assert (ny.lat, ny.lng, ny.radius_m) == (40.758, -73.9855, DEFAULT_RADIUS_M)
    assert ny.geometry is None and ny.kind == "circle"
    assert ny.tags == ("downtown", "flagship")
    assert ny.address == "1 Times Sq"
    assert ny.timezone == "America/New_York"
    assert got["tk-1"].radius_m == 120.0
    assert got["tk-1"].timezone == "Asia/Tokyo"
    assert got["tk-1"].address is None
    assert got["fj-1"].radius_m == 91.44
    assert got["fj-1"].timezone == "Pacific/Fiji"
    assert got["fj-2"].radius_m == 91.44  # 300 ft
    assert got["fj-2"].timezone == "Pacific/Fiji"
    assert got["km-1"].radius_m == 500.0
    assert got["km-1"].timezone == "Europe/London"
    assert got["mi-1"].radius_m == 1609.344
    assert got["mi-1"].timezone == "America/Los_Angeles"


def test_csv_lines_are_reported() -> None:
    results = parse_csv(GOOD_CSV)
    assert [r.line for r in results] == [2, 3, 4, 5, 6, 7]


def test_csv_bom_header_case_aliases_and_extra_columns() -> None:
    data = (
        "\ufeff Store_ID ,NAME,Latitude,LONGITUDE,Radius_M,Region,TimeZone,Notes\r\n"
        "p-1,Café Paris,48.8566,2.3522,60,EU-West,,open late\r\n"
        "p-2,Gare,48.8443,2.3744,,EU-West,Europe/Paris,\r\n"
    ).encode()
    got = records(parse_csv(data))
    p1 = got["p-1"]
    assert p1.name == "Café Paris"
    assert p1.radius_m == 60.0
    assert p1.timezone == "Europe/Paris"
    assert p1.extra == {"Region": "EU-West", "Notes": "open late"}
    assert got["p-2"].extra == {"Region": "EU-West", "Notes": ""}
    assert got["p-2"].radius_m == DEFAULT_RADIUS_M


def test_csv_lon_alias_and_no_radius_column() -> None:
    got = records(parse_csv("store_id,name,lat,lon\ns,Shop,40.7,-74.0\n"))
    assert got["s"].lng == -74.0
    assert got["s"].radius_m == DEFAULT_RADIUS_M


def test_csv_quoted_multiline_value_keeps_physical_line_numbers() -> None:
    data = f'{HEADER},address\na,A,40.7,-74.0,"1 Main St\nSuite 2"\nb,,40.7,-74.0,\n'
    results = parse_csv(data)
    assert isinstance(results[0], ParsedRow) and results[0].line == 2
    assert results[0].record.address == "1 Main St\nSuite 2"
    assert errors_of(results) == [(4, "name", "name is empty")]


def test_csv_blank_lines_are_skipped_and_counted() -> None:
    results = parse_csv(f"{HEADER}\n\na,A,40.7,-74.0\n,,,\nb,B,40.7,-74.0\n")
    assert [r.line for r in results] == [3, 5]


def test_csv_classic_mac_line_endings() -> None:
    results = parse_csv(f"{HEADER}\ra,A,40.7,-74.0\rb,B,35.68,139.77\r")
    assert [r.line for r in results] == [2, 3]
    assert records(results)["b"].timezone == "Asia/Tokyo"


def test_csv_given_timezone_is_kept() -> None:
    got = records(parse_csv(f"{HEADER},timezone\na,A,40.7,-74.0,America/Chicago\n"))
    assert got["a"].timezone == "America/Chicago"


def test_csv_polar_test_fence_is_not_called_swapped() -> None:
    # Arctic Ocean point; swapped it would land in Tibet, but |lat| > 85 skips the sea test.
    got = records(parse_csv(f"{HEADER}\npole,Polar test,86,30\n"))
    assert got["pole"].timezone.startswith("Etc/GMT")


# ------------------------------------------------------------------------- CSV: errors


@pytest.mark.parametrize(
    ("row", "field", "reason"),
    [
        (",Shop,40.7,-74.0", "store_id", "store_id is empty"),
        ("a/b,Shop,40.7,-74.0", "store_id", "store_id contains '/' (it is used in URLs)"),
        ('"a\tb",Shop,40.7,-74.0', "store_id", "store_id contains a control character"),
        (
            "x" * 129 + ",Shop,40.7,-74.0",
            "store_id",
            "store_id is 129 characters long (at most 128)",
        ),
        ("s, ,40.7,-74.0", "name", "name is empty"),
        ("s,Shop,abc,-74.0", "lat", "lat 'abc' is not a number"),
        ("s,Shop,40.7,", "lng", "lng is empty"),
        ("s,Shop,NaN,-74.0", "lat", "lat 'NaN' is not a finite number"),
        ("s,Shop,40.7,-inf", "lng", "lng '-inf' is not a finite number"),
        ('s,Shop,"40,7",-74.0', "lat", "lat '40,7' is not a number"),
        ("s,Shop,95,120", "lat", "lat 95 is out of range [-90, 90]"),
        ("s,Shop,40.7,-200", "lng", "lng -200 is out of range [-180, 180]"),
        ("s,Shop,151.2,-33.87", "lat", "lat 151.2 is out of range; lat and lng look swapped"),
    ],
)
def test_csv_row_errors(row: str, field: str, reason: str) -> None:
    results = parse_csv(f"{HEADER}\n{row}\n")
    assert errors_of(results) == [(2, field, reason)]


def test_csv_swapped_point_in_sea_or_antarctica() -> None:
    results = parse_csv(
        f"{HEADER}\n"
        "ny,New York,-74.006,40.7128\n"  # Antarctica; swapped is Manhattan
        "pa,Paris,2.3522,48.8566\n"  # Indian Ocean; swapped is Paris
        "ok,Null Island buoy,0,0\n"  # sea both ways: not a swap
        "ar,Arctic,84,30\n"  # below the 85° cut-off: tested, and swapped is Tibet
    )
    errs = [r for r in results if isinstance(r, RowError)]
    assert [(e.line, e.store_id, e.field) for e in errs] == [
        (2, "ny", "lat"),
        (3, "pa", "lat"),
        (5, "ar", "lat"),
    ]
    assert errs[0].reason == (
        "lat -74.006, lng 40.7128 is in Antarctica while (lat 40.7128, lng -74.006) is on "
        "land (America/New_York); lat and lng look swapped"
    )
    assert "is in the open sea" in errs[1].reason and "Europe/Paris" in errs[1].reason
    assert records([r for r in results if isinstance(r, ParsedRow)])["ok"].timezone == "Etc/GMT"


def test_csv_swapped_point_detected_from_timezone() -> None:
    # (37.6173, 55.7558) is in Iran, but the row says Moscow, which is where the swap lands.
    results = parse_csv(f"{HEADER},timezone\nmsk,Moscow,37.6173,55.7558,Europe/Moscow\n")
    ((line, field, reason),) = errors_of(results)
    assert (line, field) == (2, "lat")
    assert "Asia/Tehran" in reason and reason.endswith("lat and lng look swapped")
    # The same zone written for the right point is fine.
    good = parse_csv(f"{HEADER},timezone\nmsk,Moscow,55.7558,37.6173,Europe/Moscow\n")
    assert records(good)["msk"].timezone == "Europe/Moscow"


def test_csv_duplicate_store_id() -> None:
    results = parse_csv(f"{HEADER}\na,A,40.7,-74.0\nb,B,40.7,-74.0\n a ,A2,40.7,-74.0\n")
    assert errors_of(results) == [(4, "store_id", "duplicate store_id, first seen on line 2")]
    assert results[2] == RowError(4, "a", "store_id", "duplicate store_id, first seen on line 2")


@pytest.mark.parametrize(
    ("columns", "values", "field", "reason"),
    [
        ("radius_m", "abc", "radius_m", "radius_m 'abc' is not a number"),
        ("radius_m", "5", "radius_m", "radius 5 m is outside 10 m..10 km"),
        ("radius_ft", "20", "radius_ft", "radius 20 ft = 6.096 m is outside 10 m..10 km"),
        ("radius_m", "-50", "radius_m", "radius -50 m is outside 10 m..10 km"),
        (
            "radius,radius_unit",
            "7,mi",
            "radius",
            "radius 7 mi = 11265.408 m is outside 10 m..10 km",
        ),
        (
            "radius,radius_unit",
            "3,furlong",
            "radius_unit",
            "unknown unit 'furlong' (use m, yd, ft, km or mi)",
        ),
        (
            "radius,radius_unit",
            "30,",
            "radius_unit",
            "radius_unit is empty; say which unit radius is in (m, yd, ft, km or mi)",
        ),
        (
            "radius_m,radius_yd",
            "50,50",
            "radius_yd",
            "more than one radius given (radius_m=50, radius_yd=50); give one",
        ),
        (
            "timezone",
            "Mars/Olympus",
            "timezone",
            "unknown time zone 'Mars/Olympus' (use an IANA name like Europe/Paris)",
        ),
    ],
)
def test_csv_radius_and_timezone_errors(columns: str, values: str, field: str, reason: str) -> None:
    results = parse_csv(f"{HEADER},{columns}\ns,Shop,40.7,-74.0,{values}\n")
    assert errors_of(results) == [(2, field, reason)]


def test_csv_radius_bounds_are_inclusive() -> None:
    got = records(
        parse_csv(f"{HEADER},radius,radius_unit\na,A,40.7,-74.0,10,m\nb,B,40.7,-74.0,10,km\n")
    )
    assert (got["a"].radius_m, got["b"].radius_m) == (10.0, 10_000.0)


def test_csv_every_bad_field_and_every_bad_row_is_reported() -> None:
    data = (
        f"{HEADER},radius_m,timezone\n"
        "good,Good,40.7,-74.0,,\n"
        ",,north,999,2,Nowhere/Land\n"
        "good,Dup,40.7,-74.0,,\n"
        "ok2,Fine,35.68,139.77,,\n"
        "x,Y,151.2,-33.87,,\n"
    )
    results = parse_csv(data)
    assert [type(r).__name__ for r in results].count("ParsedRow") == 2
    assert errors_of(results) == [
        (3, "store_id", "store_id is empty"),
        (3, "name", "name is empty"),
        (3, "lat", "lat 'north' is not a number"),
        (3, "timezone", "unknown time zone 'Nowhere/Land' (use an IANA name like Europe/Paris)"),
        (3, "radius_m", "radius 2 m is outside 10 m..10 km"),
        (4, "store_id", "duplicate store_id, first seen on line 2"),
        (6, "lat", "lat 151.2 is out of range; lat and lng look swapped"),
    ]


def test_csv_row_with_too_many_fields() -> None:
    results = parse_csv(f"{HEADER}\ns,Shop, Inc,40.7,-74.0\n")
    errs = [r for r in results if isinstance(r, RowError)]
    assert errs[0].field is None
    assert errs[0].reason.startswith("row has 5 fields but the header has 4")


def test_row_error_to_dict() -> None:
    assert RowError(3, "s", "lat", "bad").to_dict() == {
        "line": 3,
        "store_id": "s",
        "field": "lat",
        "reason": "bad",
    }
    assert RowError(2, None, "geometry", "bad", feature=2).to_dict() == {
        "line": 2,
        "store_id": None,
        "field": "geometry",
        "reason": "bad",
        "feature": 2,
    }


# ---------------------------------------------------------------------- CSV: the file


def test_empty_file() -> None:
    assert str(file_error(b"")) == "file is empty"
    assert str(file_error(b"  \r\n\n")) == "file is empty"
    assert str(file_error(b"", iter_fences)) == "file is empty"


def test_header_only_yields_nothing() -> None:
    assert parse_csv(f"{HEADER},radius_m\n") == []


def test_missing_required_column() -> None:
    err = file_error(b"store_id,name,lat,longitud\ns,Shop,40.7,-74.0\n")
    assert str(err) == ("missing required column 'lng' (header has: store_id, name, lat, longitud)")
    assert err.errors == [
        RowError(
            1,
            None,
            "lng",
            "missing required column 'lng' (header has: store_id, name, lat, longitud)",
        )
    ]
    assert len(file_error(b"name\nx\n").errors) == 3


def test_header_problems_raise_when_called() -> None:
    # Before any row is read, so an importer can answer 422 at once.
    with pytest.raises(FileError, match="missing required column 'lat'"):
        iter_csv(io.BytesIO(b"store_id,name,lng\n"))
    with pytest.raises(FileError, match="UTF-16"):
        iter_fences(io.BytesIO(HEADER.encode("utf-16")), "stores.csv")


def test_nameless_column_kept_only_where_filled() -> None:
    got = records(parse_csv(f"{HEADER},\ns,Shop,40.7,-74.0,\nt,T,40.7,-74.0,hello\n"))
    assert got["s"].extra == {}
    assert got["t"].extra == {"column_5": "hello"}


def test_duplicate_and_ambiguous_columns() -> None:
    assert "column 'lat' appears twice" in str(file_error(b"store_id,name,lat,latitude,lng\n"))
    assert "needs a 'radius_unit' column" in str(file_error(f"{HEADER},radius\n".encode()))


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_utf16_file(encoding: str) -> None:
    data = f"{HEADER}\ns,Café,40.7,-74.0\n".encode(encoding)
    err = file_error(data)
    assert str(err) == "file is not UTF-8 text (it looks like UTF-16); save it as UTF-8"
    assert str(file_error(data, iter_fences, filename="stores.csv")) == str(err)


def test_latin1_bytes_name_the_line_and_offset() -> None:
    data = f"{HEADER}\na,Shop,40.7,-74.0\n".encode() + "b,Café,40.7,-74.0\n".encode("latin-1")
    it = iter_csv(io.BytesIO(data))
    first = next(it)
    assert isinstance(first, ParsedRow)  # rows before the bad byte stream out first
    with pytest.raises(FileError) as info:
        next(it)
    offset = data.index(b"\xe9")
    assert str(info.value) == (
        f"file is not UTF-8 text: line 3 has byte 0xE9 at byte offset {offset}; it looks like "
        "Latin-1 / Windows-1252; save it as UTF-8"
    )
    assert info.value.errors[0].line == 3


def test_excel_workbook_is_refused() -> None:
    workbook = b"PK\x03\x04" + b"\x00" * 100
    assert "ZIP archive (an Excel .xlsx workbook?)" in str(file_error(workbook, iter_fences))
    assert "ZIP archive" in str(file_error(workbook, iter_csv))
    geo = collection(feature(point(-74.0, 40.7), store_id="s", name="Shop"))
    assert "unsupported file type '.xlsx'" in str(
        file_error(geo, iter_fences, filename="stores.xlsx")
    )


def test_malformed_csv_quote() -> None:
    err = file_error(f'{HEADER}\ns,"Sh"op,40.7,-74.0\n'.encode())
    assert "malformed CSV" in str(err)
    assert err.errors[0].line == 2


# ---------------------------------------------------------------------------- GeoJSON


def feature(geometry: dict[str, Any] | None, **props: Any) -> dict[str, Any]:
    return {"type": "Feature", "geometry": geometry, "properties": props}


def collection(*features: Any) -> bytes:
    return json.dumps({"type": "FeatureCollection", "features": list(features)}).encode()


def parse_geojson(data: bytes) -> list[ParsedRow | RowError]:
    return list(iter_geojson(io.BytesIO(data)))


def point(lng: float, lat: float) -> dict[str, Any]:
    return {"type": "Point", "coordinates": [lng, lat]}


SQUARE_WITH_HOLE = {
    "type": "Polygon",
    "coordinates": [
        [[-73.99, 40.75], [-73.97, 40.75], [-73.97, 40.77], [-73.99, 40.77], [-73.99, 40.75]],
        [
            [-73.985, 40.755],
            [-73.985, 40.765],
            [-73.975, 40.765],
            [-73.975, 40.755],
            [-73.985, 40.755],
        ],
    ],
}

# 0.1° x 0.15° (16.7 km x 16 km across ±180: within the 20 km extent of a fence)
ANTIMERIDIAN = {
    "type": "MultiPolygon",
    "coordinates": [
        [[[179.9, -16.85], [180.0, -16.85], [180.0, -16.75], [179.9, -16.75], [179.9, -16.85]]],
        [[[-180.0, -16.85], [-179.95, -16.85], [-179.95, -16.75], [-180.0, -16.75],
          [-180.0, -16.85]]],
    ],
}  # fmt: skip


def test_geojson_circles_and_polygons() -> None:
    data = collection(
        feature(point(-73.9855, 40.758), store_id="c-default", name="Default radius"),
        feature(point(139.7005, 35.6595), store_id="c-m", name="Metres", radius_m=120),
        feature(point(178.4419, -18.1416), store_id="c-yd", name="Yards", radius_yd="100"),
        feature(point(-0.1278, 51.5074), store_id="c-km", name="Km", radius=0.5, radius_unit="km"),
        feature(
            SQUARE_WITH_HOLE,
            store_id="poly",
            name="Block",
            tags=["downtown", " nyc "],
            floor=3,
        ),
        feature(
            ANTIMERIDIAN,
            store_id=42,
            name="Taveuni",
            tags="islands;fiji",
            lat=-16.8,
            lng=179.95,
            address="Waiyevo",
        ),
    )
    got = records(parse_geojson(data))
    assert got["c-default"].radius_m == DEFAULT_RADIUS_M
    assert got["c-default"].timezone == "America/New_York"
    assert got["c-m"].radius_m == 120.0 and got["c-m"].timezone == "Asia/Tokyo"
    assert got["c-yd"].radius_m == 91.44 and got["c-yd"].timezone == "Pacific/Fiji"
    assert got["c-km"].radius_m == 500.0

    poly = got["poly"]
    assert poly.kind == "polygon" and poly.radius_m is None
    assert poly.geometry == SQUARE_WITH_HOLE
    assert poly.tags == ("downtown", "nyc")
    assert poly.extra == {"floor": 3}
    assert poly.timezone == "America/New_York"
    # The store point defaults to a point inside the polygon (not in its hole).
    assert -73.99 < poly.lng < -73.97 and 40.75 < poly.lat < 40.77
    assert not (-73.985 < poly.lng < -73.975 and 40.755 < poly.lat < 40.765)

    multi = got["42"]
    assert multi.geometry == ANTIMERIDIAN
    assert (multi.lat, multi.lng) == (-16.8, 179.95)
    assert multi.tags == ("islands", "fiji")
    assert multi.address == "Waiyevo"
    assert multi.timezone == "Pacific/Fiji"


def test_geojson_feature_numbers_as_lines() -> None:
    data = collection(
        feature(point(-73.98, 40.75), store_id="a", name="A"),
        feature(point(-73.98, 40.75), name="no id"),
    )
    results = parse_geojson(data)
    assert isinstance(results[0], ParsedRow) and results[0].line == 1
    assert results[1] == RowError(2, None, "store_id", "store_id is missing", feature=2)
    assert results[1].to_dict()["feature"] == 2


BOW_TIE = {
    "type": "Polygon",
    "coordinates": [
        [[-73.99, 40.74], [-73.97, 40.76], [-73.97, 40.74], [-73.99, 40.76], [-73.99, 40.74]]
    ],
}


@pytest.mark.parametrize(
    ("feat", "field", "reason"),
    [
        (
            feature(BOW_TIE, store_id="s", name="N"),
            "geometry",
            "self-intersecting polygon: Self-intersection[-73.98 40.75]",
        ),
        (
            feature(
                {"type": "LineString", "coordinates": [[0, 0], [1, 1]]}, store_id="s", name="N"
            ),
            "geometry",
            "unsupported geometry type 'LineString' (use Point with a radius, Polygon or MultiPolygon)",
        ),
        (feature(None, store_id="s", name="N"), "geometry", "feature has no geometry"),
        (feature(point(-73.98, 40.75), store_id="s"), "name", "properties.name is missing"),
        (
            feature(SQUARE_WITH_HOLE, store_id="s", name="N", radius_m=50),
            "radius_m",
            "a radius is not allowed on a Polygon feature (its shape is the fence)",
        ),
        (
            feature(
                {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1]]]},
                store_id="s",
                name="N",
            ),
            "geometry",
            "outer ring is not closed: its last position must repeat the first",
        ),
        (
            feature(
                {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [0, 0]]]},
                store_id="s",
                name="N",
            ),
            "geometry",
            "outer ring has 3 positions; a closed ring needs at least 4 (the last repeating the first)",
        ),
        (
            feature(
                {"type": "Polygon", "coordinates": [[[0, 0], [181, 0], [1, 1], [0, 0]]]},
                store_id="s",
                name="N",
            ),
            "geometry",
            "outer ring position 2: lng 181 is out of range [-180, 180]",
        ),
        (
            feature(point(-33.87, 151.2), store_id="s", name="Sydney"),
            "lat",
            "lat 151.2 is out of range; lat and lng look swapped (GeoJSON positions are [lng, lat])",
        ),
        (
            feature(point(-73.98, 40.75), store_id="s", name="N", radius_ft=10),
            "radius_ft",
            "radius 10 ft = 3.048 m is outside 10 m..10 km",
        ),
        (
            feature(point(-73.98, 40.75), store_id="s", name="N", timezone="EST5EDT/Nope"),
            "timezone",
            "unknown time zone 'EST5EDT/Nope' (use an IANA name like Europe/Paris)",
        ),
        (
            {"type": "Point", "coordinates": [0, 0]},
            "type",
            "feature 1 is not a GeoJSON Feature (type 'Point')",
        ),
    ],
)
def test_geojson_feature_errors(feat: dict[str, Any], field: str, reason: str) -> None:
    results = parse_geojson(collection(feat))
    assert errors_of(results) == [(1, field, reason)]


def test_geojson_polygon_drawn_lat_lng() -> None:
    # Sydney drawn as [lat, lng]: every "lat" is out of range while every "lng" fits.
    ring = [[-33.87, 151.2], [-33.86, 151.2], [-33.86, 151.21], [-33.87, 151.2]]
    results = parse_geojson(
        collection(feature({"type": "Polygon", "coordinates": [ring]}, store_id="s", name="N"))
    )
    reasons = [reason for _, _, reason in errors_of(results)]
    assert "positions look like [lat, lng]; GeoJSON positions are [lng, lat]" in reasons


def test_geojson_duplicate_store_id() -> None:
    results = parse_geojson(
        collection(
            feature(point(-73.98, 40.75), store_id="a", name="A"),
            feature(SQUARE_WITH_HOLE, store_id="a", name="A again"),
        )
    )
    assert errors_of(results) == [(2, "store_id", "duplicate store_id, first seen on feature 1")]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            json.dumps(feature(point(0, 0), store_id="s", name="N")).encode(),
            "not a FeatureCollection",
        ),
        (b"[1, 2]", "not a GeoJSON FeatureCollection (it is a list)"),
        (b'{"type": "FeatureCollection"}', "has no 'features' list"),
        (b'{"features": []}', 'no "type": "FeatureCollection"'),
        (b'{"type": "FeatureCollection", "features": {}}', "'features' must be a list"),
        (b"store_id,name\n", "file is not valid JSON"),
        (b"\xff\xfe{\x00}\x00", "looks like UTF-16"),
    ],
)
def test_geojson_file_errors(data: bytes, message: str) -> None:
    assert message in str(file_error(data, iter_geojson))


def test_geojson_truncated_after_some_features() -> None:
    data = collection(
        feature(point(-73.98, 40.75), store_id="a", name="A"),
        feature(point(-73.98, 40.75), store_id="b", name="B"),
    )
    it = iter_geojson(io.BytesIO(data[:-40]))
    assert isinstance(next(it), ParsedRow)
    with pytest.raises(FileError, match=r"ends too early \(truncated\?\)"):
        list(it)


def test_geojson_type_after_features_is_still_checked() -> None:
    data = b'{"features": [], "type": "Feature"}'
    assert "not a FeatureCollection" in str(file_error(data, iter_geojson))


def test_geojson_latin1_is_refused() -> None:
    data = collection(feature(point(2.35, 48.85), store_id="a", name="Café")).replace(
        b"Caf\\u00e9", b"Caf\xe9"
    )
    assert "not UTF-8" in str(file_error(data, iter_geojson))


# --------------------------------------------------------------------- format sniffing


def test_iter_fences_by_extension_and_by_sniffing() -> None:
    csv_data = f"{HEADER}\ns,Shop,40.7,-74.0\n".encode()
    geo = collection(feature(point(-74.0, 40.7), store_id="s", name="Shop"))
    for data, name in [
        (csv_data, "stores.CSV"),
        (csv_data, None),
        (csv_data, "stores.txt"),
        (geo, "stores.geojson"),
        (geo, "stores.json"),
        (b"\xef\xbb\xbf  \n" + geo, None),
    ]:
        (row,) = list(iter_fences(io.BytesIO(data), name))
        assert isinstance(row, ParsedRow) and row.record.store_id == "s", name
    assert "unsupported file type '.kml'" in str(file_error(geo, iter_fences, filename="a.kml"))
    assert "not valid JSON" in str(file_error(csv_data, iter_fences, filename="a.json"))


# -------------------------------------------------------------------------- streaming


# Real exports carry long free-text columns; they make the file far bigger than the ids.
NOTES = "Open 7am-9pm; drive-through; parking at rear; accessible entrance on the side " * 4


class LazyCsv(io.RawIOBase):
    """A CSV produced row by row as it is read: the file never exists in memory."""

    def __init__(self, rows: int) -> None:
        self._lines = self._generate(rows)
        self._buffer = b""
        self.size = 0

    @staticmethod
    def _generate(rows: int) -> Iterator[bytes]:
        yield b"store_id,name,lat,lng,radius_yd,tags,timezone,address,notes\n"
        for i in range(rows):
            lat = 25.0 + (i % 2000) * 0.01
            lng = -120.0 + (i // 2000) * 0.4
            yield (
                f"store-{i:07d},Store number {i},{lat:.5f},{lng:.5f},{50 + i % 100},"
                f"retail;zone-{i % 7},America/Chicago,{i} Commerce Street Suite {i % 300},"
                f"{NOTES}\n"
            ).encode()

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while len(self._buffer) < len(b):
            line = next(self._lines, None)
            if line is None:
                break
            self._buffer += line
        n = min(len(b), len(self._buffer))
        b[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        self.size += n
        return n


@pytest.mark.slow
def test_streaming_200k_rows_in_flat_memory() -> None:
    rows = 200_000
    timezone_at(40.7, -74.0)  # the time zone finder's one-off set-up is not per row
    stream = LazyCsv(rows)
    tracemalloc.start()
    try:
        good = bad = 0
        for result in iter_csv(stream):  # type: ignore[arg-type]
            if isinstance(result, ParsedRow):
                good += 1
            else:
                bad += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (good, bad) == (rows, 0)
    assert stream.size > 20_000_000
    # Only the map of seen store ids (for duplicate detection) grows with the file, about
    # 150 bytes per id; every row itself is freed once yielded.
    assert peak < 160 * rows + 2_000_000, (peak, stream.size)
    assert peak < stream.size / 3, (peak, stream.size)


def _box(lng: float, lat: float, d_lng: float, d_lat: float) -> dict[str, Any]:
    ring = [
        [lng, lat],
        [lng + d_lng, lat],
        [lng + d_lng, lat + d_lat],
        [lng, lat + d_lat],
        [lng, lat],
    ]
    return {"type": "Polygon", "coordinates": [ring]}


@pytest.mark.parametrize(
    ("geometry", "reason"),
    [
        # the polygon: every ping on Earth "entered" it
        (_box(-170, -80, 340, 160), "polygon spans 17,791.2 km north-south and 37,806.3 km east-west; "
         "a fence spans at most 20 km either way"),
        (_box(2.3, 48.8, 0.1, 0.19), "polygon spans 21.1 km north-south"),
        (_box(2.3, 48.8, 0.3, 0.1), "and 22.0 km east-west"),
        # across the antimeridian, measured the short way round (0.4° of longitude)
        ({"type": "MultiPolygon", "coordinates": [_box(179.8, -16.9, 0.2, 0.1)["coordinates"],
          _box(-180, -16.9, 0.2, 0.1)["coordinates"]]}, "and 42.6 km east-west"),
        ({"type": "Polygon", "coordinates": [[[2.3 + 0.1 * math.cos(a * math.pi / 6000),
          48.8 + 0.05 * math.sin(a * math.pi / 6000)] for a in range(12_000)] + [[2.4, 48.8]]]},
         "Polygon has 12001 positions (at most 10000); simplify it"),
    ],
)  # fmt: skip
def test_polygons_have_size_limits_named_in_the_row_error(
    geometry: dict[str, Any], reason: str
) -> None:
    [error] = parse_geojson(collection(feature(geometry, store_id="big", name="Big")))
    assert isinstance(error, RowError) and error.field == "geometry", error
    assert reason in error.reason


def test_polygon_area_limit_is_a_10_km_circle() -> None:
    # A 19.9 km square is within the extent limit, and its 396 km² over the area limit.
    d_lat = d_lng = 19_900 / (math.pi * EARTH_RADIUS_M / 180)  # at the equator
    [error] = parse_geojson(
        collection(feature(_box(30, 0, d_lng, d_lat), store_id="sq", name="Sq"))
    )
    assert isinstance(error, RowError)
    assert error.reason.startswith("polygon covers 39") and "at most 314.2 km²" in error.reason
    small = _box(30, 0, d_lng / 2, d_lat / 2)  # ~99 km²
    assert isinstance(
        parse_geojson(collection(feature(small, store_id="ok", name="Ok")))[0], ParsedRow
    )


@pytest.mark.parametrize(
    ("row", "field", "reason"),
    [
        ("s1,Caf\x01e,40.7,-74.0", "name", "name contains control character U+0001"),
        ("s1,Cafe\x9c,40.7,-74.0", "name", "name contains control character U+009C"),
        ("s1," + "n" * 201 + ",40.7,-74.0", "name", "name is 201 characters long (at most 200)"),
    ],
)
def test_csv_text_with_control_characters_or_too_long_is_a_row_error(
    row: str, field: str, reason: str
) -> None:
    [error] = parse_csv(f"{HEADER}\n{row}\n")
    assert isinstance(error, RowError) and (error.field, error.reason) == (field, reason)


def test_csv_nul_past_the_sniffed_head_is_a_row_error() -> None:
    # A NUL in the first 64 KiB makes the file "binary"; further down it is the row's error.
    rows = "".join(f"s{i},Shop {i},40.7,-74.0\n" for i in range(4_000))
    got = parse_csv(f"{HEADER}\n{rows}late,Caf\x00e,40.7,-74.0\n")
    errors = [e for e in got if isinstance(e, RowError)]
    assert [(e.line, e.field, e.reason) for e in errors] == [
        (4_002, "name", "name contains control character U+0000")
    ]


def test_geojson_text_with_nul_is_a_row_error_named_by_field() -> None:
    # PostgreSQL refuses NUL in text and \u0000 in jsonb: a 500 before, a row error now.
    data = collection(
        feature(point(2.35, 48.85), store_id="a", name="A", address="1 rue\u0000"),
        feature(point(2.35, 48.85), store_id="b", name="B", tags=["ok", "x\u0001"]),
        feature(point(2.35, 48.85), store_id="c", name="C", note={"deep": ["fine", "bad\u0000"]}),
        feature(point(2.35, 48.85), store_id="d", name="D", note="two\nlines\tare fine"),
    )
    got = parse_geojson(data)
    errors = {(e.store_id, e.field, e.reason) for e in got if isinstance(e, RowError)}
    assert errors == {
        ("a", "address", "address contains control character U+0000"),
        ("b", "tags", "a tag contains control character U+0001"),
        ("c", "note", "note.deep.1 contains control character U+0000"),
    }
    assert [r.record.store_id for r in got if isinstance(r, ParsedRow)] == ["d"]


@pytest.mark.parametrize(
    "data",
    [
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4,
        b"\x00" * 64 + b"store_id",
        bytes(range(256)) * 8,
    ],
)
def test_a_binary_upload_is_called_binary_not_utf16(data: bytes) -> None:
    message = str(file_error(data, iter_fences, filename="stores.csv"))
    assert message.startswith("file is binary, not CSV or GeoJSON text"), message
