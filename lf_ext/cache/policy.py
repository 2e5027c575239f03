"""What makes a stored background usable for a new image: one definition, shared by the cache's lookups
and inserts and by sibling training (which serves training images exactly what a hit would serve).

- *admission*: a background set B is worth storing when it covers ``min_coverage`` of the units;
- *verification*: an entry with background set B serves an image only when every unit of B is within
  ``unit_threshold`` (mean absolute difference of the unit's uint8 pixels, 0-255) of the stored one.
  This exact per-unit check decides; probe fingerprints only pre-select candidates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lf_ext.cache.fingerprint import max_unit_distance, unit_distances


@dataclass(frozen=True)
class VerificationPolicy:
    """Thresholds of reuse (see the module docstring)."""

    unit_threshold: float = 4.0
    min_coverage: float = 0.3

    def __post_init__(self):
        if self.unit_threshold < 0 or not 0 <= self.min_coverage <= 1:
            raise ValueError(f"need unit_threshold >= 0 and 0 <= min_coverage <= 1, got {self.unit_threshold}, {self.min_coverage}")

    @classmethod
    def from_settings(cls, keys) -> "VerificationPolicy":
        """From the ``bgobj_cache_*`` keys (:class:`~lf_ext.config.BgObjArguments`)."""
        return cls(keys.bgobj_cache_unit_threshold, keys.bgobj_cache_min_coverage)

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
