"""What makes a stored background usable for a new image: one definition, shared by the cache's lookups
and inserts and by sibling training (which serves training images exactly what a hit would serve).

- *admission*: a background set B is worth storing when it covers ``min_coverage`` of the units;
- *verification*: an entry with background set B serves an image only when every unit of B is within
  ``unit_threshold`` (mean absolute difference of the unit's uint8 pixels, 0-255) of the stored one.
  This exact per-unit check decides; probe fingerprints only pre-select candidates.
- *choice* (``mode``, the ``bgobj_cache_policy`` key), given the request's own background set
  (its mask's split): ``exact`` serves only entries whose B equals it, so a hit answers exactly as
  the request computed on its own would (the background tokens come from pixels within the
  threshold: identical pixels give identical answers); ``reuse`` serves any verified entry and tries
  them closest split first: fewest units where B and the request's own background differ, then the
  larger B, then the entry id. The choice depends on the cache's content, never on insertion order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from lf_ext.cache.fingerprint import max_unit_distance, unit_distances


@dataclass(frozen=True)
class VerificationPolicy:
    """Thresholds of reuse (see the module docstring)."""

    unit_threshold: float = 4.0
    min_coverage: float = 0.3
    mode: str = "reuse"  # or "exact"

    def __post_init__(self):
        if self.unit_threshold < 0 or not 0 <= self.min_coverage <= 1:
            raise ValueError(f"need unit_threshold >= 0 and 0 <= min_coverage <= 1, got {self.unit_threshold}, {self.min_coverage}")
        if self.mode not in ("reuse", "exact"):
            raise ValueError(f"policy mode must be 'reuse' or 'exact', got {self.mode!r}")

    @classmethod
    def from_settings(cls, keys) -> "VerificationPolicy":
        """From the ``bgobj_cache_*`` keys (:class:`~lf_ext.config.BgObjArguments`)."""
        return cls(keys.bgobj_cache_unit_threshold, keys.bgobj_cache_min_coverage, keys.bgobj_cache_policy)

    def candidates(self, entries: Sequence[Any], own_background: np.ndarray | None) -> list[Any]:
        """The entries (with ``background`` and ``entry_id``) that may serve a request whose own background
        set is ``own_background`` (None: unknown, the given order is kept), in the order to try them."""
        if own_background is None:
            return list(entries)
        own = np.asarray(own_background, dtype=bool)
        if self.mode == "exact":
            return [entry for entry in entries if np.array_equal(entry.background, own)]
        key = lambda entry: (int((entry.background != own).sum()), -int(entry.background.sum()), entry.entry_id)  # noqa: E731
        return sorted(entries, key=key)

    def admits(self, background: np.ndarray) -> bool:
        """Whether a background set (bool, any shape) is large enough to store."""
        background = np.asarray(background, dtype=bool)
        return bool(background.any()) and float(background.mean()) >= self.min_coverage

    def distance(self, stored: np.ndarray, units: np.ndarray, index: np.ndarray) -> float:
        """Largest per-unit distance between ``stored`` (|B|, u, u, 3) and the units ``index`` (flat) of
        ``units`` (rows, cols, u, u, 3); may stop early once above the threshold."""
        return max_unit_distance(stored, units, index, stop_above=self.unit_threshold)

    def verifies(self, stored: np.ndarray, units: np.ndarray, index: np.ndarray) -> bool:
        return self.distance(stored, units, index) <= self.unit_threshold

    def verified(self, stored: np.ndarray, units: np.ndarray, index: np.ndarray) -> np.ndarray:
        """Per stored unit (|B|,) bool: within the threshold."""
        return unit_distances(stored, units, index) <= self.unit_threshold
