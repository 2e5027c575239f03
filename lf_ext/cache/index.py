"""Fast candidate search over the probe fingerprints of one (context key, grid) group.

Each entry is one row of preallocated uint8 matrices. For every probe the row stores an
acceptance interval as ``lo`` and ``width`` (fingerprint +- tolerance, clipped to 0-255; a probe
that is not background in the entry gets ``lo=0, width=255`` and so always passes). A query's
probe value ``q`` violates the interval iff ``(q - lo) mod 256 > width``, one wrapping subtraction
and one comparison per cell. With 10,000 entries x 64 probes that is about 0.3 ms in numpy.

- *exact candidates*: no probe violated. Only these can verify; they are ranked by the mean
  absolute fingerprint difference over the entry's background probes.
- *near entries*: at most ``near_limit`` probes violated (set per entry by the caller). A lookup
  whose near entries all fail is a rejection, not a miss.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lf_ext.cache.fingerprint import NOT_BACKGROUND


class ProbeIndex:
    """Fingerprint rows of one group; slots of removed entries are reused."""

    def __init__(self, probes: int, tolerance: int, capacity: int = 64) -> None:
        self.probes = probes
        self.width = -(-probes // 64) * 64  # pad columns so rows pack into whole uint64 words
        self.tolerance = tolerance
        self._items: list[Any] = []
        self._ids: list[str] = []  # item id per slot ("" for a free slot): ties are broken by id, not insertion
        self._slots: dict[str, int] = {}
        self._free: list[int] = []
        self._alloc(capacity)

    def _alloc(self, capacity: int) -> None:
        old = len(self._items)
        lo = np.zeros((capacity, self.width), np.uint8)
        span = np.full((capacity, self.width), 255, np.uint8)
        fps = np.full((capacity, self.width), NOT_BACKGROUND, np.int16)
        limit = np.full(capacity, -1, np.int64)
        if old:
            lo[:old], span[:old], fps[:old], limit[:old] = self._lo, self._span, self._fps, self._limit
        self._lo, self._span, self._fps, self._limit = lo, span, fps, limit
        self._diff = np.empty((capacity, self.width), np.uint8)
        self._viol = np.empty((capacity, self.width), bool)

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, item_id: str) -> bool:
        return item_id in self._slots

    def get(self, item_id: str) -> Any:
        slot = self._slots.get(item_id)
        return None if slot is None else self._items[slot]

    def add(self, item_id: str, item: Any, masked_fp: np.ndarray, near_limit: int) -> None:
        """Add (or replace) ``item`` with its int16 masked fingerprint (P,)."""
        if item_id in self._slots:
            self.remove(item_id)
        if self._free:
            slot = self._free.pop()
        else:
            slot = len(self._items)
            if slot == len(self._limit):
                self._alloc(2 * slot)
            self._items.append(None)
            self._ids.append("")
        bg = masked_fp != NOT_BACKGROUND
        fp = masked_fp.astype(np.int64)
        self._lo[slot] = 0
        self._span[slot] = 255
        self._fps[slot] = NOT_BACKGROUND
        self._lo[slot, : self.probes] = np.where(bg, np.clip(fp - self.tolerance, 0, 255), 0)
        self._span[slot, : self.probes] = np.where(bg, np.clip(fp + self.tolerance, 0, 255) - self._lo[slot, : self.probes], 255)
        self._fps[slot, : self.probes] = masked_fp
        self._limit[slot] = near_limit
        self._items[slot] = item
        self._ids[slot] = item_id
        self._slots[item_id] = slot

    def remove(self, item_id: str) -> Any:
        """Drop ``item_id``; returns its item or None."""
        slot = self._slots.pop(item_id, None)
        if slot is None:
            return None
        item, self._items[slot], self._ids[slot] = self._items[slot], None, ""
        self._lo[slot], self._span[slot], self._fps[slot], self._limit[slot] = 0, 255, NOT_BACKGROUND, -1
        self._free.append(slot)
        return item

    def query(self, fp: np.ndarray, max_exact: int | None = None) -> tuple[list[Any], int]:
        """(up to ``max_exact`` (None: all) exact candidates, best first; number of near entries)."""
        near, counts, query = self._near(fp)
        exact = near[counts[near] == 0]
        if len(exact) == 0:
            return [], len(near)
        return [self._items[s] for s in self._rank(exact, query)[:max_exact]], len(near)

    def nearest(self, fp: np.ndarray, limit: int | None) -> list[Any]:
        """Up to ``limit`` near entries, fewest violated probes first (ties by id)."""
        near, counts, _ = self._near(fp)
        return [self._items[s] for s in self._by(near, counts[near])[:limit]]

    def _by(self, slots: np.ndarray, score: np.ndarray) -> np.ndarray:
        """``slots`` sorted by ``score``, ties by item id (the same order whatever the insertion order)."""
        ids = np.array([self._ids[s] for s in slots], dtype=object)
        return slots[np.lexsort((ids.astype(str), score))] if len(slots) else slots

    def _near(self, fp: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(slots of near entries, violated probes per slot, padded query)."""
        n = len(self._items)
        query = np.zeros(self.width, np.uint8)
        query[: self.probes] = fp
        if n == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), query
        diff = np.subtract(query, self._lo[:n], out=self._diff[:n])  # wraps mod 256 on purpose
        viol = np.greater(diff, self._span[:n], out=self._viol[:n])
        counts = _row_counts(viol)
        return np.flatnonzero(counts <= self._limit[:n]), counts, query

    def _rank(self, slots: np.ndarray, query: np.ndarray) -> np.ndarray:
        fps = self._fps[slots].astype(np.int32)
        bg = fps != NOT_BACKGROUND
        dist = (np.abs(fps - query.astype(np.int32)) * bg).sum(axis=1) / np.maximum(bg.sum(axis=1), 1)
        return self._by(slots, dist)


def _row_counts(viol: np.ndarray) -> np.ndarray:
    """True cells per row of a (n, 64k) bool matrix (popcount of packed words; numpy >= 2.0)."""
    if not hasattr(np, "bitwise_count"):
        return np.count_nonzero(viol, axis=1)
    return np.bitwise_count(np.packbits(viol, axis=1).view(np.uint64)).sum(axis=1)
