"""Benchmark FenceIndex: build time, memory and per-ping match cost on realistic fences.

Fences cluster around a few hundred city centres (radius mix 45.72 m / 100 m / 1 km, 2 %
small polygons). Pings fall in the fenced areas, half of them inside a fence. Machines are
noisy: compare against the REFERENCE lines measured in the same run on the same pings.

    python benchmarks/bench_geofences.py --sizes 10000,100000,1000000
"""

from __future__ import annotations

import argparse
import gc
import math
import time
import tracemalloc
from typing import Any

import h3.api.basic_int as h3
import numpy as np

from geofences.cover import haversine_m
from geofences.fences import CircleFence
from geofences.index import FenceIndex
from geofences.model import DEFAULT_RADIUS_M, FenceRecord
from geofences.sphere import EARTH_RADIUS_M

N_CITIES = 300
N_PINGS = 50_000


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def _offset(lat: float, lng: float, east_m: float, north_m: float) -> tuple[float, float]:
    """Small local offset in metres (equirectangular is plenty for synthetic data)."""
    dlat = math.degrees(north_m / EARTH_RADIUS_M)
    dlng = math.degrees(east_m / (EARTH_RADIUS_M * math.cos(math.radians(lat))))
    return lat + dlat, (lng + dlng + 180.0) % 360.0 - 180.0


def make_records(n: int, rng: np.random.Generator) -> list[FenceRecord]:
    """``n`` stores around ``N_CITIES`` cities; 2 % are small polygons."""
    cities = np.column_stack((rng.uniform(-45, 60, N_CITIES), rng.uniform(-180, 180, N_CITIES)))
    city = rng.integers(0, N_CITIES, n)
    # City sizes vary: spread the stores with a per-city sigma of 2-15 km.
    sigma = rng.uniform(2_000, 15_000, N_CITIES)[city]
    east, north = rng.normal(0, 1, n) * sigma, rng.normal(0, 1, n) * sigma
    radii = rng.choice([DEFAULT_RADIUS_M, 100.0, 1000.0], n, p=[0.6, 0.3, 0.1])
    is_poly = rng.random(n) < 0.02
    recs = []
    for i in range(n):
        lat, lng = _offset(float(cities[city[i], 0]), float(cities[city[i], 1]), east[i], north[i])
        if is_poly[i]:
            half = float(rng.uniform(30, 300))
            ring = [
                _offset(lat, lng, half * math.cos(a), half * math.sin(a))
                for a in np.sort(rng.uniform(0, 2 * math.pi, 5))
            ]
            coords = [[b, a] for a, b in ring]  # GeoJSON positions are [lng, lat]
            geometry = {"type": "Polygon", "coordinates": [[*coords, coords[0]]]}
            recs.append(FenceRecord(f"s{i}", "store", lat, lng, geometry=geometry))
        else:
            recs.append(FenceRecord(f"s{i}", "store", lat, lng, radius_m=float(radii[i])))
    return recs


def make_pings(
    recs: list[FenceRecord], n: int, rng: np.random.Generator
) -> list[tuple[float, float]]:
    """Half inside a random fence (before checking), half within 2 km of a random store."""
    pings = []
    for j in range(n):
        rec = recs[int(rng.integers(len(recs)))]
        if j % 2 == 0:
            r = rec.radius_m if rec.radius_m is not None else 30.0
            d, a = r * math.sqrt(rng.random()), rng.uniform(0, 2 * math.pi)
        else:
            d, a = rng.uniform(0, 2000), rng.uniform(0, 2 * math.pi)
        pings.append(_offset(rec.lat, rec.lng, d * math.cos(a), d * math.sin(a)))
    return pings


def bench(n: int, seed: int, trace: bool) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    recs = make_records(n, rng)
    pings = make_pings(recs, N_PINGS, rng)
    gc.collect()
    rss0 = _rss_bytes()
    t0 = time.perf_counter()
    index = FenceIndex.build(recs)
    build_s = time.perf_counter() - t0
    gc.collect()
    rss_delta = _rss_bytes() - rss0
    peak = current = float("nan")
    if trace:
        del index
        gc.collect()
        tracemalloc.start()
        index = FenceIndex.build(recs)
        current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()

    t0 = time.perf_counter()
    found = sum(len(index.match(lat, lng)) for lat, lng in pings)
    us_ping = (time.perf_counter() - t0) / len(pings) * 1e6
    hit_pings = sum(1 for lat, lng in pings[:5000] if index.match(lat, lng))

    t0 = time.perf_counter()
    for lat, lng in pings:
        h3.latlng_to_cell(lat, lng, 10)
    us_h3 = (time.perf_counter() - t0) / len(pings) * 1e6

    us_brute = float("nan")
    if n <= 10_000:
        circles = [index.get(r.store_id) for r in recs if r.radius_m is not None]
        flat = np.array([f.lat for f in circles if isinstance(f, CircleFence)])
        flng = np.array([f.lng for f in circles if isinstance(f, CircleFence)])
        frad = np.array([f.radius_m for f in circles if isinstance(f, CircleFence)])
        sample = pings[:2000]
        t0 = time.perf_counter()
        for lat, lng in sample:
            np.flatnonzero(
                haversine_m(flat, flng, np.full_like(flat, lat), np.full_like(flat, lng)) <= frad
            )
        us_brute = (time.perf_counter() - t0) / len(sample) * 1e6

    stats = index.stats()
    return {
        "fences": n,
        "build_s": build_s,
        "rss_mb": rss_delta / 1e6,
        "peak_mb": peak / 1e6,
        "kept_mb": current / 1e6,
        "approx_mb": stats.get("approx_bytes", stats.get("base_bytes", 0)) / 1e6,
        "entries_per_fence": stats["entries"] / n,
        "res": ",".join(map(str, stats["resolutions"])),
        "us_ping": us_ping,
        "matches": found,
        "hit_share": hit_pings / 5000,
        "us_h3": us_h3,
        "us_brute": us_brute,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000", help="comma-separated fence counts")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-trace", action="store_true", help="skip the tracemalloc build")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(
        f"{N_PINGS} pings per size; build timed without tracemalloc. Memory: rss = RSS delta of "
        "the timed build (after gc; the build ends with glibc malloc_trim, so freed temporaries "
        "are not counted but everything the index holds is, GEOS polygons included); peak/kept = "
        "tracemalloc peak and retained bytes of a second build (Python allocations only: not "
        "GEOS); approx = FenceIndex.stats() estimate. FenceRecords are not counted."
    )
    head = (
        f"{'fences':>9} {'build s':>8} {'rss MB':>7} {'peak MB':>8} {'kept MB':>8} "
        f"{'approx MB':>9} {'ent/fence':>9} {'res':>12} {'us/ping':>8} "
        f"{'matches':>8} {'hit%':>5} | REF {'h3 us':>6} {'brute us':>8}"
    )
    print(head)
    for n in sizes:
        r = bench(n, args.seed, trace=not args.no_trace)
        print(
            f"{r['fences']:>9} {r['build_s']:>8.2f} {r['rss_mb']:>7.1f} {r['peak_mb']:>8.1f} "
            f"{r['kept_mb']:>8.1f} {r['approx_mb']:>9.1f} {r['entries_per_fence']:>9.2f} "
            f"{r['res']:>12} {r['us_ping']:>8.2f} {r['matches']:>8} "
            f"{100 * r['hit_share']:>5.1f} | REF {r['us_h3']:>6.2f} {r['us_brute']:>8.1f}",
            flush=True,
        )
    print(
        "REF h3 us = one bare h3.latlng_to_cell(lat, lng, 10) per ping; brute us = numpy "
        "haversine over all circle fences per ping (10 k only)."
    )


if __name__ == "__main__":
    main()
