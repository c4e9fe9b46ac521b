"""In-memory fence index: H3 cells narrow the candidates, the exact fences decide.

An index is an immutable view: a columnar :class:`~geofences.base.FenceBase` (possibly a
file mapped read-only and shared by processes) plus a small overlay of the fences changed
since that base was built. :meth:`FenceIndex.with_changes` returns a new view and leaves
the old one untouched, so a reader holding a view sees it whole, before or after a change.
"""

from __future__ import annotations

import ctypes
import sys
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import h3.api.basic_int as h3
import numpy as np
from numpy.typing import NDArray

from geofences.base import Columns, FenceBase
from geofences.cover import _latlng_to_cell, circle_covers, polygon_covers
from geofences.fences import CircleFence, Fence, PolygonFence, fence_from_record
from geofences.model import FenceRecord
from geofences.sphere import sphere_distance_m


@dataclass(frozen=True, slots=True)
class Match:
    """A fence the ping is inside, with the distance from the store point in metres."""

    fence: Fence
    distance_m: float


@dataclass(frozen=True, slots=True)
class _Overlay:
    """Fences changed since the base: never mutated once made (views share them)."""

    fences: dict[str, Fence] = field(default_factory=dict)  # upserted, by store id
    cells_of: dict[str, tuple[int, ...]] = field(default_factory=dict)
    cells: dict[int, tuple[Fence, ...]] = field(default_factory=dict)
    dead: frozenset[int] = frozenset()  # base rows deleted or replaced

    @property
    def resolutions(self) -> set[int]:
        return {h3.get_resolution(c[0]) for c in self.cells_of.values() if c}


_EMPTY: Final = _Overlay()


@dataclass(frozen=True, slots=True)
class FenceColumns:
    """Every live fence of a view as columns (``radius_m`` NaN for polygons); ``store_id(i)``
    and ``fence(i)`` give row ``i``'s id and fence."""

    lat: NDArray[np.float64]
    lng: NDArray[np.float64]
    radius_m: NDArray[np.float64]
    _base: FenceBase
    _rows: NDArray[np.int64]
    _extra: list[Fence]

    def __len__(self) -> int:
        return len(self.lat)

    def fence(self, i: int) -> Fence:
        n = len(self._rows)
        return self._base.fence(int(self._rows[i])) if i < n else self._extra[i - n]

    def store_id(self, i: int) -> str:
        n = len(self._rows)
        return self._base.store_id(int(self._rows[i])) if i < n else self._extra[i - n].store_id


class FenceIndex:
    """Fences by H3 cell: ``match(lat, lng)`` returns every fence that covers the point.

    ``get(store_id)``, ``store_id in index``, ``len(index)`` and ``index.version`` read the
    same view. ``columns()`` gives every live fence as numpy columns (``lat``, ``lng``,
    ``radius_m`` with NaN for polygons) plus ``store_id(i)`` / ``fence(i)`` for row ``i``:
    the cheap way to draw or export them all (iterating makes a fence object per fence).

    Examples
    --------
    >>> idx = FenceIndex.build([FenceRecord("s1", "Store", 40.0, -74.0, radius_m=45.72)])
    >>> [(m.fence.store_id, round(m.distance_m, 1)) for m in idx.match(40.0003, -74.0)]
    [('s1', 33.4)]
    >>> idx.match(40.001, -74.0)
    []
    >>> moved = idx.with_changes([FenceRecord("s1", "Store", 40.001, -74.0, radius_m=45.72)],
    ...                          [], version=1)
    >>> len(moved.match(40.001, -74.0)), len(idx.match(40.001, -74.0)), moved.version
    (1, 0, 1)
    >>> cols = moved.columns(); cols.store_id(0), float(cols.lat[0])
    ('s1', 40.001)
    """

    __slots__ = ("_base", "_base_res", "_ov", "_plan", "version")

    def __init__(self, base: FenceBase, overlay: _Overlay = _EMPTY, version: int | None = None):
        self._base = base
        self._ov = overlay
        self.version: int = base.version if version is None else version
        self._base_res = frozenset(base.resolutions)
        res = sorted(self._base_res | overlay.resolutions)
        # (resolution, look in the base, look in the overlay) per resolution in use.
        ov_res = overlay.resolutions
        self._plan = tuple((r, r in self._base_res, r in ov_res) for r in res)

    # --- construction -------------------------------------------------------------------

    @classmethod
    def build(cls, records: Iterable[FenceRecord], version: int = 0) -> FenceIndex:
        """Index ``records`` in memory; raises ValueError on a duplicate ``store_id``."""
        base = FenceBase.build(Columns.from_records(list(records)), version=version)
        release_free_heap()
        return cls(base)

    @classmethod
    def open(cls, path: Path) -> FenceIndex:
        """The index of a base saved with :meth:`FenceBase.save` (mapped, shared)."""
        return cls(FenceBase.open(path))

    @property
    def base(self) -> FenceBase:
        return self._base

    @property
    def entries(self) -> int:
        """(cell, fence) pairs in the table."""
        return self._base.entries + sum(len(c) for c in self._ov.cells_of.values())

    @property
    def resolutions(self) -> tuple[int, ...]:
        """H3 resolutions in use, coarse to fine."""
        return tuple(r for r, _, _ in self._plan)

    @property
    def overlay_size(self) -> int:
        """Fences changed since the base was built (upserted ones plus deleted base rows)."""
        return len(self._ov.fences) + len(self._ov.dead)

    def with_changes(
        self, upserts: Sequence[FenceRecord], deletes: Iterable[str], version: int
    ) -> FenceIndex:
        """A new view: ``upserts`` added or replaced, ``deletes`` removed (absent ids are
        ignored). Covers and fence objects are made here; ``self`` is not changed."""
        ov = self._ov
        fences = dict(ov.fences)
        cells_of = dict(ov.cells_of)
        cells = dict(ov.cells)
        dead = set(ov.dead)
        base = self._base

        def drop(store_id: str) -> None:
            old = fences.pop(store_id, None)
            if old is not None:
                for c in cells_of.pop(store_id, ()):
                    rest = tuple(f for f in cells[c] if f is not old)
                    if rest:
                        cells[c] = rest
                    else:
                        del cells[c]
            p = base.position(store_id)
            if p >= 0:
                dead.add(p)

        for store_id in deletes:
            drop(store_id)
        new = [fence_from_record(r) for r in upserts]
        for fence in new:
            drop(fence.store_id)
        for fence, fence_cells in zip(new, _covers(new), strict=True):
            fences[fence.store_id] = fence
            cells_of[fence.store_id] = fence_cells
            for c in fence_cells:
                cells[c] = (*cells.get(c, ()), fence)
        return FenceIndex(base, _Overlay(fences, cells_of, cells, frozenset(dead)), version)

    # --- reads (the hot path) -----------------------------------------------------------

    def match(self, lat: float, lng: float) -> list[Match]:
        """Fences covering the point, nearest store first (ties by store_id)."""
        base = self._base
        keys, starts, positions = base.keys, base.starts, base.positions
        radius, flat, flng = base.radius, base.lat, base.lng
        dead = self._ov.dead
        ov_cells = self._ov.cells
        out: list[Match] = []
        for res, in_base, in_ov in self._plan:
            cell = _latlng_to_cell(lat, lng, res)
            if in_base:
                row = bisect_left(keys, cell)
                if row < len(keys) and keys[row] == cell:
                    for p in positions[starts[row] : starts[row + 1]]:
                        if dead and p in dead:
                            continue
                        r = radius[p]
                        if r == r:  # a circle, tested on the columns: no object unless inside
                            # Centre first, ping second: the order sphere.py matches PostGIS in.
                            d = sphere_distance_m(flat[p], flng[p], lat, lng)
                            if d <= r:
                                out.append(Match(base.fence(p), d))
                        else:
                            fence = base.fence(p)
                            dp = fence.match_distance_m(lat, lng)
                            if dp is not None:
                                out.append(Match(fence, dp))
            if in_ov:
                for fence in ov_cells.get(cell, ()):
                    dp = fence.match_distance_m(lat, lng)  # H3 narrowed; geometry decides
                    if dp is not None:
                        out.append(Match(fence, dp))
        if len(out) > 1:
            out.sort(key=_match_order)
        return out

    def candidates(self, lat: float, lng: float) -> list[Fence]:
        """Fences registered in the ping's cells (a superset of the matches)."""
        base = self._base
        out: list[Fence] = []
        for res, in_base, in_ov in self._plan:
            cell = _latlng_to_cell(lat, lng, res)
            if in_base:
                row = bisect_left(base.keys, cell)
                if row < len(base.keys) and base.keys[row] == cell:
                    rows = base.positions[base.starts[row] : base.starts[row + 1]]
                    out += [base.fence(p) for p in rows if p not in self._ov.dead]
            if in_ov:
                out += self._ov.cells.get(cell, ())
        return out

    def get(self, store_id: str) -> Fence | None:
        """The fence of ``store_id``, or None."""
        fence = self._ov.fences.get(store_id)
        if fence is not None:
            return fence
        p = self._base.position(store_id)
        if p < 0 or p in self._ov.dead:
            return None
        return self._base.fence(p)

    def __len__(self) -> int:
        return self._base.n - len(self._ov.dead) + len(self._ov.fences)

    def __contains__(self, store_id: object) -> bool:
        return isinstance(store_id, str) and self.get(store_id) is not None

    def __iter__(self) -> Iterator[Fence]:
        """Every fence (one object each: use :meth:`columns` for bulk reads)."""
        dead = self._ov.dead
        for p in range(self._base.n):
            if p not in dead:
                yield self._base.fence(p)
        yield from self._ov.fences.values()

    def columns(self) -> FenceColumns:
        """Every live fence as columns (see the class docstring)."""
        base = self._base
        live = np.ones(base.n, dtype=bool)
        if self._ov.dead:
            live[np.fromiter(self._ov.dead, dtype=np.int64)] = False
        rows = np.flatnonzero(live)
        extra = list(self._ov.fences.values())
        nan = float("nan")
        return FenceColumns(
            lat=np.concatenate((base.arrays["lat"][rows], [f.lat for f in extra])),
            lng=np.concatenate((base.arrays["lng"][rows], [f.lng for f in extra])),
            radius_m=np.concatenate(
                (base.arrays["radius"][rows], [f.radius_m or nan for f in extra])
            ),
            _base=base,
            _rows=rows,
            _extra=extra,
        )

    def stats(self) -> dict[str, Any]:
        """Sizes for logs and benchmarks."""
        b = self._base.stats()
        ov_polys = sum(1 for f in self._ov.fences.values() if isinstance(f, PolygonFence))
        dead_polys = sum(1 for p in self._ov.dead if self._base.radius[p] != self._base.radius[p])
        polygons = b["polygons"] - dead_polys + ov_polys
        return {
            "fences": len(self),
            "circles": len(self) - polygons,
            "polygons": polygons,
            "entries": self.entries,
            "cells": b["cells"],
            "resolutions": list(self.resolutions),
            "base_bytes": b["bytes"],
            "overlay": self.overlay_size,
        }


#: Fences whose covers are computed in one call when a delta is applied: the H3 calls of
#: one call hold the GIL throughout (no bytecode runs between them), so a large delta is
#: cut up to let the event loop's pings in between (one call of 20 k circles held it for
#: ~70 ms, measured as event-loop lag).
COVER_SLICE: Final = 500


def _covers(fences: list[Fence]) -> list[tuple[int, ...]]:
    """Each fence's cover cells (the bulk cover functions, ``COVER_SLICE`` fences a call)."""
    out: list[list[int]] = [[] for _ in fences]
    circles = [i for i, f in enumerate(fences) if isinstance(f, CircleFence)]
    polys = [i for i, f in enumerate(fences) if isinstance(f, PolygonFence)]
    for k in range(0, len(circles), COVER_SLICE):
        part = circles[k : k + COVER_SLICE]
        arr = np.array([(fences[i].lat, fences[i].lng, fences[i].radius_m) for i in part])
        _, cells, owners = circle_covers(arr[:, 0].copy(), arr[:, 1].copy(), arr[:, 2].copy())
        for c, o in zip(cells.tolist(), owners.tolist(), strict=True):
            out[part[o]].append(c)
    for k in range(0, len(polys), COVER_SLICE):
        part = polys[k : k + COVER_SLICE]
        geoms = [fences[i].geom for i in part]  # type: ignore[union-attr]
        _, cells, owners = polygon_covers(geoms)
        for c, o in zip(cells.tolist(), owners.tolist(), strict=True):
            out[part[o]].append(c)
    return [tuple(sorted(set(c))) for c in out]


def _find_malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim  # glibc only (not musl)
    except (OSError, AttributeError):
        return None
    return trim


_MALLOC_TRIM: Final = _find_malloc_trim()


def release_free_heap() -> None:
    """Give the C heap's free pages back to the OS (glibc's ``malloc_trim``; else a no-op).

    A build frees far more temporary memory than the index keeps (cover candidates, sort
    buffers); glibc keeps most of it in the process otherwise.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _match_order(m: Match) -> tuple[float, str]:
    return (m.distance_m, m.fence.store_id)
