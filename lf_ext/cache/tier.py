"""One tier of the cache (memory or disk): items in recency order, their bytes and probe indexes."""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import numpy as np

from lf_ext.cache.entry import IndexKey
from lf_ext.cache.fingerprint import NOT_BACKGROUND
from lf_ext.cache.index import ProbeIndex


class Tier:
    """Items with ``entry_id``, ``key``, ``probes`` and ``nbytes``; oldest first. Not thread-safe:
    the store calls it under its lock.

    Args:
        tolerance: probe tolerance (see :func:`lf_ext.cache.fingerprint.probe_tolerance`).
        candidate_match: share of an item's background probes that must pass for it to count as near.
    """

    def __init__(self, tolerance: int, candidate_match: float) -> None:
        self.tolerance, self.candidate_match = tolerance, candidate_match
        self.items: OrderedDict[str, Any] = OrderedDict()
        self.nbytes = 0
        self._indexes: dict[IndexKey, ProbeIndex] = {}

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, entry_id: str) -> bool:
        return entry_id in self.items

    def add(self, item: Any) -> Any:
        """Add ``item`` as the newest; returns the item it replaced (same id) or None."""
        old = self.pop(item.entry_id)
        self.items[item.entry_id] = item
        self.nbytes += item.nbytes
        if item.key not in self._indexes:
            self._indexes[item.key] = ProbeIndex(len(item.probes), self.tolerance)
        background_probes = int((item.probes != NOT_BACKGROUND).sum())
        near_limit = math.floor((1 - self.candidate_match) * background_probes + 1e-9)
        self._indexes[item.key].add(item.entry_id, item, item.probes, near_limit)
        return old

    def pop(self, entry_id: str) -> Any:
        """Remove and return the item, or None."""
        item = self.items.pop(entry_id, None)
        if item is not None:
            self.nbytes -= item.nbytes
            index = self._indexes[item.key]
            index.remove(entry_id)
            if not len(index):
                del self._indexes[item.key]
        return item

    def pop_oldest(self) -> Any:
        return self.pop(next(iter(self.items)))

    def touch(self, entry_id: str) -> None:
        """Mark as most recently used, if still present."""
        if entry_id in self.items:
            self.items.move_to_end(entry_id)

    def query(self, key: IndexKey, fp: np.ndarray, max_exact: int | None = None) -> tuple[list[Any], int]:
        """(exact candidates best first, number of near items) for the group ``key``."""
        index = self._indexes.get(key)
        return index.query(fp, max_exact) if index is not None else ([], 0)

    def nearest(self, key: IndexKey, fp: np.ndarray, limit: int | None) -> list[Any]:
        """Up to ``limit`` (None: all) near items of the group ``key``, fewest violated probes first."""
        index = self._indexes.get(key)
        return index.nearest(fp, limit) if index is not None else []

    def clear(self) -> list[Any]:
        """Remove everything; returns the removed items."""
        items = list(self.items.values())
        self.items.clear()
        self._indexes.clear()
        self.nbytes = 0
        return items
