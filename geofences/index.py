"""In-memory fence index: H3 cells narrow the candidates, the exact fences decide.

One table over all resolutions in use, stored as CSR arrays: sorted unique cell ids, row
starts, and fence positions (int32). Cells are found by bisecting the sorted array('Q')
(about 1.5 us, 8 bytes a cell). A dict was 0.84 us faster per match at 100 k fences (9.31 vs
10.15 us), but costs ~100 bytes a cell and building it held the GIL for tens of milliseconds
at a time, a stall for pings while a rebuilt index is assembled (service/fences/builder.py).
"""

from __future__ import annotations

import ctypes
import sys
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from geofences.cover import _latlng_to_cell, circle_covers, polygon_covers
from geofences.fences import CircleFence, Fence, PolygonFence, fence_from_record
from geofences.model import FenceRecord


@dataclass(frozen=True, slots=True)
class Match:
    """A fence the ping is inside, with the distance from the store point in metres."""

    fence: Fence
    distance_m: float


class FenceIndex:
    """Fences by H3 cell: ``match(lat, lng)`` returns every fence that covers the point.

    Examples
    --------
    >>> idx = FenceIndex.build([FenceRecord("s1", "Store", 40.0, -74.0, radius_m=45.72)])
    >>> [(m.fence.store_id, round(m.distance_m, 1)) for m in idx.match(40.0003, -74.0)]
    [('s1', 33.4)]
    >>> idx.match(40.001, -74.0)
    []
    """

    __slots__ = (
        "_by_id",
        "_fences",
        "_keys",
        "_positions",
        "_starts",
        "entries",
        "resolutions",
        "version",
    )

    def __init__(
        self,
        fences: list[Fence],
        by_id: dict[str, Fence],
        cells: NDArray[np.uint64],
        owners: NDArray[np.int32],
        version: int,
    ) -> None:
        self.version = version
        self._fences = fences
        self._by_id = by_id
        n_entries = len(cells)
        order = np.argsort(cells)
        sorted_cells = cells[order]
        del cells  # drop references early: each of these arrays is 8 bytes an entry
        self._positions = _to_array("i", owners[order])
        del order, owners
        # Unique by hand: the cells are sorted already (np.unique would sort a copy again).
        first_mask = np.ones(len(sorted_cells), dtype=bool)
        first_mask[1:] = sorted_cells[1:] != sorted_cells[:-1]
        keys = sorted_cells[first_mask]
        del sorted_cells
        starts = np.append(np.flatnonzero(first_mask), n_entries)
        del first_mask
        # array('Q') rather than numpy: bisect on it yields plain ints, ~5x faster per ping
        # than numpy's scalar searchsorted, at the same 8 bytes a cell.
        self._keys = _to_array("Q", keys)
        self._starts = _to_array("i", starts.astype(np.int32))
        self.entries = n_entries
        res = (keys >> np.uint64(52)) & np.uint64(0xF)  # H3 bits 52-55 hold the resolution
        self.resolutions: tuple[int, ...] = tuple(int(r) for r in np.unique(res))

    @classmethod
    def build(cls, records: Iterable[FenceRecord], version: int = 0) -> FenceIndex:
        """Index ``records``; raises ValueError on a duplicate ``store_id``."""
        fences: list[Fence] = []
        # store_id -> fence itself: an int position per fence would cost 32 bytes more each.
        by_id: dict[str, Fence] = {}
        circle_pos: list[int] = []
        poly_pos: list[int] = []
        for rec in records:
            if rec.store_id in by_id:
                raise ValueError(f"duplicate store_id {rec.store_id!r}")
            fence = fence_from_record(rec)
            (circle_pos if isinstance(fence, CircleFence) else poly_pos).append(len(fences))
            by_id[rec.store_id] = fence
            fences.append(fence)

        circles = [fences[i] for i in circle_pos]
        n_c = len(circles)
        lats = np.fromiter((f.lat for f in circles), dtype=np.float64, count=n_c)
        lngs = np.fromiter((f.lng for f in circles), dtype=np.float64, count=n_c)
        radii = np.fromiter((f.radius_m for f in circles), dtype=np.float64, count=n_c)
        del circles
        _, cells, owners = circle_covers(lats, lngs, radii)
        del lats, lngs, radii
        cell_parts = [cells]
        owner_parts = [np.array(circle_pos, dtype=np.int32)[owners]]
        del cells, owners
        geoms = [fences[i].geom for i in poly_pos]  # type: ignore[union-attr]
        _, pcells, powners = polygon_covers(geoms)
        cell_parts.append(pcells)
        owner_parts.append(np.array(poly_pos, dtype=np.int32)[powners])
        del geoms, pcells, powners
        all_cells = np.concatenate(cell_parts)
        del cell_parts
        all_owners = np.concatenate(owner_parts)
        del owner_parts
        index = cls(fences, by_id, all_cells, all_owners, version)
        del all_cells, all_owners
        release_free_heap()
        return index

    def entries_arrays(self) -> tuple[NDArray[np.uint64], NDArray[np.int32]]:
        """The cell and fence position of every entry: with the records in build order, all
        :meth:`from_entries` needs to make this index again (in another process, say)
        without computing a cover."""
        keys = np.frombuffer(self._keys, dtype=np.uint64)
        starts = np.frombuffer(self._starts, dtype=np.int32)
        cells = np.repeat(keys, np.diff(starts))
        return cells, np.frombuffer(self._positions, dtype=np.int32).copy()

    @classmethod
    def from_entries(
        cls,
        records: Iterable[FenceRecord],
        cells: NDArray[np.uint64],
        owners: NDArray[np.int32],
        version: int = 0,
    ) -> FenceIndex:
        """The index of ``records`` from the entries :meth:`entries_arrays` gave for them."""
        fences: list[Fence] = []
        by_id: dict[str, Fence] = {}
        for rec in records:
            if rec.store_id in by_id:
                raise ValueError(f"duplicate store_id {rec.store_id!r}")
            fence = fence_from_record(rec)
            by_id[rec.store_id] = fence
            fences.append(fence)
        if len(owners) and int(owners.max()) >= len(fences):
            raise ValueError("entries refer to more fences than were given")
        return cls(fences, by_id, cells, owners, version)

    def candidates(self, lat: float, lng: float) -> list[Fence]:
        """Fences registered in the ping's cells (a superset of the matches)."""
        fences, starts, positions = self._fences, self._starts, self._positions
        return [
            fences[p]
            for row in self._rows(lat, lng)
            for p in positions[starts[row] : starts[row + 1]]
        ]

    def _rows(self, lat: float, lng: float) -> list[int]:
        """Table rows of the ping's cell at each resolution in use (cells with no fence skipped)."""
        # The cell of a finer resolution's parent is not always the cell of the point at the
        # coarser one, so ask H3 at every resolution.
        keys = self._keys
        n = len(keys)
        found = []
        for res in self.resolutions:
            cell = _latlng_to_cell(lat, lng, res)
            row = bisect_left(keys, cell)
            if row < n and keys[row] == cell:
                found.append(row)
        return found

    def match(self, lat: float, lng: float) -> list[Match]:
        """Fences covering the point, nearest store first (ties by store_id)."""
        fences, starts, positions = self._fences, self._starts, self._positions
        out: list[Match] = []
        for row in self._rows(lat, lng):
            for p in positions[starts[row] : starts[row + 1]]:
                fence = fences[p]
                d = fence.match_distance_m(lat, lng)  # H3 narrowed; the exact geometry decides
                if d is not None:
                    out.append(Match(fence, d))
        if len(out) > 1:
            out.sort(key=_match_order)
        return out

    def get(self, store_id: str) -> Fence | None:
        """The fence of ``store_id``, or None."""
        return self._by_id.get(store_id)

    def __len__(self) -> int:
        return len(self._fences)

    def __contains__(self, store_id: object) -> bool:
        return store_id in self._by_id

    def __iter__(self) -> Iterator[Fence]:
        return iter(self._fences)

    def stats(self) -> dict[str, Any]:
        """Sizes for logs and benchmarks; ``approx_bytes`` counts the index's own structures
        (cell table, fence objects and id map), not the shared FenceRecords."""
        polygons = sum(1 for f in self._fences if isinstance(f, PolygonFence))
        table = (
            self._keys.itemsize * len(self._keys)
            + self._starts.itemsize * len(self._starts)
            + self._positions.itemsize * len(self._positions)
        )
        fence_objs = sum(sys.getsizeof(f) for f in self._fences[:1000])
        fence_objs = fence_objs * len(self._fences) // max(1, min(1000, len(self._fences)))
        by_id = sys.getsizeof(self._by_id) + sys.getsizeof(self._fences)
        return {
            "fences": len(self._fences),
            "circles": len(self._fences) - polygons,
            "polygons": polygons,
            "entries": self.entries,
            "cells": len(self._keys),
            "resolutions": list(self.resolutions),
            "approx_bytes": table + fence_objs + by_id,
        }


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
    buffers); glibc keeps most of it in the process (freed blocks below its raised mmap
    threshold stay in the heap), which showed as ~190 MB of extra RSS at a million fences.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _match_order(m: Match) -> tuple[float, str]:
    return (m.distance_m, m.fence.store_id)


def _to_array(typecode: str, values: NDArray[Any]) -> array[Any]:
    """Copy a contiguous numpy array into an ``array.array`` without a bytes detour."""
    out: array[Any] = array(typecode)
    out.frombytes(np.ascontiguousarray(values).data.cast("B"))
    return out
