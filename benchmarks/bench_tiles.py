"""Console map tiles at 1 M fences: how long one vector tile takes, zoom by zoom.

    .venv/bin/python benchmarks/bench_tiles.py                  # 1 M fences, about 4 minutes
    .venv/bin/python benchmarks/bench_tiles.py --fences 100000 --no-memory

1. a fresh PostGIS database (``geo-offers`` migrations), ``--fences`` circle stores clustered
   around 300 cities (bench_http.py's generator) written with ``COPY``;
2. the per-version cell counts the zoomed-out tiles read (``build_pg_cells``, once per
   fence version), then per zoom ``--tiles`` tiles that a marketer would look at (the tiles
   holding randomly chosen stores, so dense downtowns weigh as they do on screen): the time
   of :func:`service.console.tiles.pg_tile` (one ``ST_AsMVT`` query, what the console's
   tile route runs on PostgreSQL on a cache miss), its size and feature count; up to zoom
   ``SUMMARY_Z`` also the same clusters aggregated from the whole table (no cells);
3. the same tiles from the in-memory index (the embedded default's path,
   :func:`service.console.tiles.memory_tile`), unless ``--no-memory``;
4. the reference, in the same run: tipg's plain way — ``ST_AsMVT`` of every store point in
   the tile, no clustering — at the low zooms, where it has to encode every fence.

Figures are printed and written to ``benchmarks/results/tiles-<time>.json``. Nothing fails
when a figure is bad: compare the rows of one run (this machine is shared and noisy).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_http import BenchDatabase, make_fences

from geofences.index import FenceIndex
from service.console import tiles
from service.db.engine import make_engine
from service.db.migrate import upgrade
from service.settings import Settings

ZOOMS = (0, 2, 4, 6, 8, 10, 11, 12, 14, 16)
NAIVE_ZOOMS = (0, 2, 4, 6)
RESULTS = Path(__file__).resolve().parent / "results"

_NAIVE = text(f"""
WITH t AS (SELECT ST_TileEnvelope(:z, :x, :y) AS env)
SELECT ST_AsMVT(q, 'fences', {tiles.EXTENT}, 'geom') FROM (
    SELECT ST_AsMVTGeom(ST_Transform(g.location, 3857), t.env, {tiles.EXTENT}, {tiles.BUFFER},
                        true) AS geom, g.store_id
    FROM geofences g, t
    WHERE g.location && ST_Transform(t.env, 4326)
) q WHERE q.geom IS NOT NULL
""")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def tile_of(lat: float, lng: float, z: int) -> tuple[int, int]:
    n = 1 << z
    lat = max(min(lat, tiles.MAX_LAT - 1e-9), -tiles.MAX_LAT + 1e-9)
    phi = math.radians(lat)
    y = int((1 - math.log(math.tan(phi) + 1 / math.cos(phi)) / math.pi) / 2 * n)
    return min(int((lng + 180) / 360 * n), n - 1), min(y, n - 1)


def sample_tiles(
    lat: np.ndarray, lng: np.ndarray, per_zoom: int, rng: np.random.Generator
) -> dict[int, list[tuple[int, int]]]:
    out: dict[int, list[tuple[int, int]]] = {}
    for z in ZOOMS:
        picked: list[tuple[int, int]] = []
        for i in rng.integers(0, len(lat), per_zoom * 4):
            xy = tile_of(float(lat[i]), float(lng[i]), z)
            if xy not in picked:
                picked.append(xy)
            if len(picked) == min(per_zoom, 4**z):
                break
        out[z] = picked
    return out


def summarise(times_ms: list[float], sizes: list[int], features: list[int]) -> dict[str, Any]:
    times = sorted(times_ms)
    return {
        "tiles": len(times),
        "p50_ms": round(statistics.median(times), 1),
        "p95_ms": round(times[min(len(times) - 1, math.ceil(0.95 * len(times)) - 1)], 1),
        "max_ms": round(times[-1], 1),
        "kb_mean": round(statistics.mean(sizes) / 1024, 1),
        "features_max": max(features),
    }


def count_features(data: bytes) -> int:
    if not data:
        return 0
    import mapbox_vector_tile

    decoded = mapbox_vector_tile.decode(data)
    return sum(len(layer["features"]) for layer in decoded.values())


def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(args.seed)
    db = BenchDatabase(args.pg_url)
    result: dict[str, Any] = {"fences": args.fences, "tiles_per_zoom": args.tiles, "zooms": {}}
    try:
        with psycopg.connect(db.url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS postgis")
        engine = make_engine(Settings(database_url=db.url))
        upgrade(engine)
        log(f"generating and loading {args.fences:,} fences with COPY ...")
        fences = make_fences(args.fences, rng)
        started = time.perf_counter()
        db.load_fences(fences)
        log(f"loaded in {time.perf_counter() - started:.0f} s")
        chosen = sample_tiles(fences.lat, fences.lng, args.tiles, rng)
        started = time.perf_counter()
        cells_version = tiles.build_pg_cells(engine)
        result["cells_build_s"] = round(time.perf_counter() - started, 2)
        log(f"cell counts built in {result['cells_build_s']} s")

        columns = None
        if args.memory:
            log("building the in-memory index (the embedded default's) ...")
            started = time.perf_counter()
            index = FenceIndex.build(fences.records())
            built = time.perf_counter() - started
            started = time.perf_counter()
            columns = tiles.fence_columns(index)
            result["memory_index_build_s"] = round(built, 1)
            result["memory_columns_s"] = round(time.perf_counter() - started, 2)
            log(f"index built in {built:.0f} s; columns read in {result['memory_columns_s']} s")

        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            rows = conn.execute(text("SELECT count(*) FROM geofences")).scalar_one()
            assert rows == args.fences, rows
            for z in ZOOMS:
                row: dict[str, Any] = {}
                pg_t, pg_s, pg_f = [], [], []
                for x, y in chosen[z]:
                    t0 = time.perf_counter()
                    data = tiles.pg_tile(conn, z, x, y, None, cells_version)
                    pg_t.append((time.perf_counter() - t0) * 1000)
                    conn.rollback()
                    pg_s.append(len(data))
                    pg_f.append(count_features(data))
                row["postgis"] = summarise(pg_t, pg_s, pg_f)
                if z <= tiles.SUMMARY_Z:
                    l_t, l_s, l_f = [], [], []
                    for x, y in chosen[z][: max(1, args.tiles // 5)]:
                        t0 = time.perf_counter()
                        data = tiles.pg_tile(conn, z, x, y)
                        l_t.append((time.perf_counter() - t0) * 1000)
                        conn.rollback()
                        l_s.append(len(data))
                        l_f.append(count_features(data))
                    row["postgis_without_cells"] = summarise(l_t, l_s, l_f)
                if columns is not None:
                    m_t, m_s, m_f = [], [], []
                    for x, y in chosen[z]:
                        t0 = time.perf_counter()
                        data = tiles.memory_tile(columns, z, x, y)
                        m_t.append((time.perf_counter() - t0) * 1000)
                        m_s.append(len(data))
                        m_f.append(count_features(data))
                    row["memory"] = summarise(m_t, m_s, m_f)
                if z in NAIVE_ZOOMS:
                    n_t, n_s, n_f = [], [], []
                    for x, y in chosen[z][: max(1, args.tiles // 5)]:
                        t0 = time.perf_counter()
                        data = bytes(
                            conn.execute(_NAIVE, {"z": z, "x": x, "y": y}).scalar_one() or b""
                        )
                        n_t.append((time.perf_counter() - t0) * 1000)
                        conn.rollback()
                        n_s.append(len(data))
                        n_f.append(count_features(data))
                    row["naive_reference"] = summarise(n_t, n_s, n_f)
                result["zooms"][z] = row
                log(f"z{z:>2}: " + json.dumps(row))
        engine.dispose()
    finally:
        db.drop()
    return result


def print_table(result: dict[str, Any]) -> None:
    print(f"\nTiles at {result['fences']:,} fences (ms per tile, cache miss; p50 / p95 / max)")
    print(
        f"cell counts for zooms 0-{tiles.SUMMARY_Z} built in {result['cells_build_s']} s "
        "(once per fence version)"
    )
    columns = (
        "zoom", "PostGIS ST_AsMVT", "features (max)", "kB", "in-memory index",
        "clusters without cells", "naive ST_AsMVT (reference)",
    )  # fmt: skip
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for z, row in result["zooms"].items():
        pg = row["postgis"]
        mem = row.get("memory")
        naive = row.get("naive_reference")

        def cell(r: dict[str, Any] | None) -> str:
            return "" if r is None else f"{r['p50_ms']} / {r['p95_ms']} / {r['max_ms']}"

        naive_cell = "" if naive is None else f"{cell(naive)} ({naive['features_max']:,} features)"
        live = cell(row.get("postgis_without_cells"))
        cells = (str(z), cell(pg), f"{pg['features_max']:,}", str(pg["kb_mean"]), cell(mem))
        print("| " + " | ".join((*cells, live, naive_cell)) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fences", type=int, default=1_000_000)
    parser.add_argument("--tiles", type=int, default=25, help="tiles per zoom")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-memory", dest="memory", action="store_false")
    parser.add_argument(
        "--pg-url",
        default=os.environ.get(
            "GEO_OFFERS_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    args = parser.parse_args()
    result = run(args)
    result["when"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"tiles-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2))
    print_table(result)
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
