"""Columnar fence storage: every fence's fields in flat arrays beside the H3 cell table.

A :class:`FenceBase` holds no object per fence: coordinates and radii are float arrays,
store ids and names are offsets into one UTF-8 blob, tag sets and time zones are small ids
into tables, polygons are WKB. Rows are sorted by a 64-bit hash of the store id, so the
hash array itself finds a store. :meth:`FenceBase.save` writes it as a directory of
``.npy`` files and :meth:`FenceBase.open` maps them read-only: processes that open the same
directory share one copy of the pages. Fence objects are made on demand (a ping's
candidates), and kept in a bounded cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import shapely
from numpy.typing import NDArray
from shapely.geometry.base import BaseGeometry

from geofences.cover import circle_covers, polygon_covers
from geofences.fences import CircleFence, Fence, PolygonFence
from geofences.model import FenceRecord

#: Fence objects (and store id positions) kept per base, made for matches and ``get``; past
#: it the cache restarts. ~0.5 KB an entry of a worker's own memory; a miss costs ~2 us.
FENCE_CACHE: Final = 16_384
FORMAT: Final = 1
_ARRAYS: Final = (
    "id_hash", "id_off", "id_blob", "name_off", "name_blob", "lat", "lng", "radius",
    "tag_id", "tz_id", "poly", "wkb_off", "wkb_blob", "cell_keys", "cell_starts", "cell_pos",
)  # fmt: skip


CircleCovers = Callable[
    [NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]],
    tuple[NDArray[np.int8], NDArray[np.uint64], NDArray[np.int64]],
]


def id_hash(store_id: str) -> int:
    """The 64-bit hash rows are sorted by (the same in every process, unlike ``hash``)."""
    return int.from_bytes(
        hashlib.blake2b(store_id.encode(), digest_size=8).digest(), "little", signed=False
    )


@dataclass(slots=True)
class Columns:
    """Fences as columns, the input of :meth:`FenceBase.build` (``radius`` NaN for polygons,
    whose shapely geometry is in ``geoms``; None for circles)."""

    store_ids: list[str]
    names: list[str]
    lat: NDArray[np.float64]
    lng: NDArray[np.float64]
    radius: NDArray[np.float64]
    tags: list[tuple[str, ...]]
    timezones: list[str]
    geoms: list[BaseGeometry | None]

    @classmethod
    def from_records(cls, records: Sequence[FenceRecord]) -> Columns:
        geoms: list[BaseGeometry | None] = [
            None if r.geometry is None else shapely.geometry.shape(r.geometry) for r in records
        ]
        nan = float("nan")
        return cls(
            store_ids=[r.store_id for r in records],
            names=[r.name for r in records],
            lat=np.array([r.lat for r in records], dtype=np.float64),
            lng=np.array([r.lng for r in records], dtype=np.float64),
            radius=np.array(
                [nan if r.geometry is not None else r.radius_m for r in records], dtype=np.float64
            ),
            tags=[r.tags for r in records],
            timezones=[r.timezone for r in records],
            geoms=geoms,
        )


def _blob(items: Sequence[bytes]) -> tuple[NDArray[np.int64], NDArray[np.uint8]]:
    lengths = np.fromiter(map(len, items), dtype=np.int64, count=len(items))
    offsets = np.zeros(len(items) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets, np.frombuffer(b"".join(items), dtype=np.uint8)


def _ids(values: Sequence[Any]) -> tuple[list[Any], list[int]]:
    """A table of the distinct values and each value's id in it."""
    table: dict[Any, int] = {}
    ids = [table.setdefault(v, len(table)) for v in values]
    return list(table), ids


def _bytes(arr: NDArray[Any]) -> memoryview[int]:
    return memoryview(np.ascontiguousarray(arr)).cast("B")  # type: ignore[arg-type]


def _mv(arr: NDArray[Any], code: Literal["B", "i", "q", "Q"]) -> memoryview[int]:
    """A flat memoryview of ``arr``: indexing it gives plain Python ints (fast per ping)."""
    return _bytes(arr).cast(code)


def _mvf(arr: NDArray[Any]) -> memoryview[float]:
    return _bytes(arr).cast("d")


class FenceBase:
    """Immutable columnar fences and their cell table (see the module docstring)."""

    def __init__(self, arrays: dict[str, NDArray[Any]], meta: dict[str, Any]) -> None:
        self.arrays = arrays
        self.meta = meta
        self.version: int = int(meta["version"])
        self.token: str | None = meta.get("token")
        self.resolutions: tuple[int, ...] = tuple(meta["resolutions"])
        self.tag_sets: list[tuple[str, ...]] = [tuple(t) for t in meta["tag_sets"]]
        self.timezones: list[str] = list(meta["timezones"])
        a = arrays
        self.n = len(a["lat"])
        self.entries = len(a["cell_pos"])
        self.lat = _mvf(a["lat"])
        self.lng = _mvf(a["lng"])
        self.radius = _mvf(a["radius"])
        self.keys = _mv(a["cell_keys"], "Q")
        self.starts = _mv(a["cell_starts"], "i")
        self.positions = _mv(a["cell_pos"], "i")
        self._hash = _mv(a["id_hash"], "Q")
        self._id_off = _mv(a["id_off"], "q")
        self._id_blob = _mv(a["id_blob"], "B")
        self._name_off = _mv(a["name_off"], "q")
        self._name_blob = _mv(a["name_blob"], "B")
        self._tag_id = _mv(a["tag_id"], "i")
        self._tz_id = _mv(a["tz_id"], "i")
        self._poly = _mv(a["poly"], "i")
        self._wkb_off = _mv(a["wkb_off"], "q")
        self._wkb_blob = _mv(a["wkb_blob"], "B")
        self._fences: dict[int, Fence] = {}
        self._where: dict[str, int] = {}
        self.path: Path | None = None

    # --- building, saving, mapping ------------------------------------------------------

    @classmethod
    def build(
        cls,
        cols: Columns,
        version: int = 0,
        token: str | None = None,
        covers: CircleCovers = circle_covers,
    ) -> FenceBase:
        """Index ``cols``: covers computed (``covers``: :func:`~geofences.cover.circle_covers`
        or a function giving the same, e.g. in several processes), rows sorted by store id
        hash; raises ValueError on a duplicate store id."""
        n = len(cols.store_ids)
        hashes = np.fromiter(map(id_hash, cols.store_ids), dtype=np.uint64, count=n)
        order = np.argsort(hashes, kind="stable")
        hashes = hashes[order]
        ids = [cols.store_ids[i] for i in order.tolist()]
        # A duplicate id has an equal hash: only then are the ids themselves compared.
        if (hashes[1:] == hashes[:-1]).any() and len(set(ids)) != n:
            dup = next(s for s, c in Counter(ids).items() if c > 1)
            raise ValueError(f"duplicate store_id {dup!r}")
        lat = np.ascontiguousarray(cols.lat[order], dtype=np.float64)
        lng = np.ascontiguousarray(cols.lng[order], dtype=np.float64)
        radius = np.ascontiguousarray(cols.radius[order], dtype=np.float64)
        id_off, id_blob = _blob([s.encode() for s in ids])
        del ids
        name_off, name_blob = _blob([cols.names[i].encode() for i in order.tolist()])
        tag_sets, tag_ids = _ids([cols.tags[i] for i in order.tolist()])
        timezones, tz_ids = _ids([cols.timezones[i] for i in order.tolist()])
        geoms = [cols.geoms[i] for i in order.tolist()]
        is_poly = np.isnan(radius)
        poly_pos = np.flatnonzero(is_poly)
        poly = np.full(n, -1, dtype=np.int32)
        poly[poly_pos] = np.arange(len(poly_pos), dtype=np.int32)
        poly_geoms = [geoms[i] for i in poly_pos.tolist()]
        if any(g is None for g in poly_geoms):
            raise ValueError("a fence without a radius has no geometry")
        wkb = list(shapely.to_wkb(np.array(poly_geoms, dtype=object))) if poly_geoms else []
        wkb_off, wkb_blob = _blob(wkb)
        circle_pos = np.flatnonzero(~is_poly)
        _, cells, owners = covers(lat[circle_pos], lng[circle_pos], radius[circle_pos])
        _, pcells, powners = polygon_covers(poly_geoms)
        all_cells = np.concatenate((cells, pcells))
        all_owners = np.concatenate((circle_pos[owners], poly_pos[powners])).astype(np.int32)
        del cells, owners, pcells, powners
        keys, starts, positions = _csr(all_cells, all_owners)
        res = (keys >> np.uint64(52)) & np.uint64(0xF)  # H3 bits 52-55 hold the resolution
        meta = {
            "format": FORMAT,
            "version": version,
            "token": token,
            "resolutions": [int(r) for r in np.unique(res)],
            "tag_sets": [list(t) for t in tag_sets],
            "timezones": timezones,
        }
        arrays: dict[str, NDArray[Any]] = {
            "id_hash": hashes, "id_off": id_off, "id_blob": id_blob, "name_off": name_off,
            "name_blob": name_blob, "lat": lat, "lng": lng, "radius": radius,
            "tag_id": np.array(tag_ids, dtype=np.int32), "tz_id": np.array(tz_ids, dtype=np.int32),
            "poly": poly, "wkb_off": wkb_off, "wkb_blob": wkb_blob, "cell_keys": keys,
            "cell_starts": starts, "cell_pos": positions,
        }  # fmt: skip
        return cls(arrays, meta)

    def save(self, path: Path) -> None:
        """Write into the new directory ``path`` (the caller renames it into place)."""
        path.mkdir(parents=True)
        for name in _ARRAYS:
            with open(path / f"{name}.npy", "wb") as f:
                np.save(f, self.arrays[name], allow_pickle=False)
                f.flush()
                os.fsync(f.fileno())
        with open(path / "meta.json", "w") as f:
            json.dump(self.meta, f)
            f.flush()
            os.fsync(f.fileno())

    @classmethod
    def open(cls, path: Path) -> FenceBase:
        """Map a saved base read-only (its pages are shared by every process that maps it)."""
        meta = json.loads((path / "meta.json").read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: unknown index format {meta.get('format')!r}")
        arrays = {
            name: np.load(path / f"{name}.npy", mmap_mode="r", allow_pickle=False)
            for name in _ARRAYS
        }
        base = cls(arrays, meta)
        base.path = path
        return base

    # --- per-fence reads -----------------------------------------------------------------

    def position(self, store_id: str) -> int:
        """Row of ``store_id``, or -1."""
        p = self._where.get(store_id)
        if p is not None:
            return p
        h = id_hash(store_id)
        hashes = self._hash
        p = bisect_left(hashes, h)
        want = store_id.encode()
        while p < self.n and hashes[p] == h:
            if self._id_bytes(p) == want:
                if len(self._where) >= FENCE_CACHE:
                    self._where.clear()
                self._where[store_id] = p
                return p
            p += 1
        return -1

    def _id_bytes(self, p: int) -> bytes:
        return bytes(self._id_blob[self._id_off[p] : self._id_off[p + 1]])

    def store_id(self, p: int) -> str:
        return self._id_bytes(p).decode()

    def fence(self, p: int) -> Fence:
        """The fence object of row ``p`` (cached)."""
        fence = self._fences.get(p)
        if fence is None:
            fence = self._make_fence(p)
            if len(self._fences) >= FENCE_CACHE:
                self._fences.clear()
            self._fences[p] = fence
        return fence

    def _make_fence(self, p: int) -> Fence:
        name = bytes(self._name_blob[self._name_off[p] : self._name_off[p + 1]]).decode()
        radius = self.radius[p]
        q = self._poly[p]
        rec = FenceRecord(
            self.store_id(p), name, self.lat[p], self.lng[p],
            radius_m=None if q >= 0 else radius, tags=self.tag_sets[self._tag_id[p]],
            timezone=self.timezones[self._tz_id[p]],
        )  # fmt: skip
        if q < 0:
            return CircleFence(rec)
        geom = shapely.from_wkb(bytes(self._wkb_blob[self._wkb_off[q] : self._wkb_off[q + 1]]))
        return PolygonFence(rec, geom)

    def stats(self) -> dict[str, Any]:
        return {
            "fences": self.n,
            "polygons": int(len(self._wkb_off) - 1),
            "entries": self.entries,
            "cells": len(self.keys),
            "resolutions": list(self.resolutions),
            "bytes": int(sum(a.nbytes for a in self.arrays.values())),
        }


def _csr(
    cells: NDArray[np.uint64], owners: NDArray[np.int32]
) -> tuple[NDArray[np.uint64], NDArray[np.int32], NDArray[np.int32]]:
    """Sorted unique cells, their row starts, and the fence positions of each row."""
    order = np.argsort(cells, kind="stable")
    sorted_cells = cells[order]
    positions = np.ascontiguousarray(owners[order], dtype=np.int32)
    first = np.ones(len(sorted_cells), dtype=bool)
    first[1:] = sorted_cells[1:] != sorted_cells[:-1]
    keys = np.ascontiguousarray(sorted_cells[first])
    starts = np.append(np.flatnonzero(first), len(sorted_cells)).astype(np.int32)
    return keys, starts, positions
