"""Token budget: entropy-based selection of the token units that get a visual token (research notes 002).

The unit of selection is the visual token's unit (28 px for Qwen2-VL, 14 px for LLaVA-1.5), and the
entropy is the Shannon entropy (bits) of the 32-bin grey-level histogram of the unit's pixels *as the
processor resized them* (read back from ``pixel_values``). Selection runs inside each group of a
separated layout (background and object apart), so the background's selection depends on background
pixels only and the background prefix stays cacheable; a plain layout (the stock template) is one
group. Dropped units get no token and are never encoded; kept units keep their stock positions.

Methods (``bgobj_patch_selection``):

- ``budget``: keep ``max(1, round(alpha * n))`` of a group's ``n`` units, highest entropy first
  (ties in row-major order); alpha 0.3 by default, as the notes recommend;
- ``v2``: keep the units whose entropy is at least ``alpha * max entropy`` of the group (the notes'
  threshold "alpha x mean of the per-image max entropy", taken per image and group so that an
  image's tokens never depend on its batch-mates, as caching needs); the maximum is always kept;
- ``v1``: fixed thresholds ``bgobj_patch_thresholds`` (the notes' ``[3, 2]``), ``t1`` for aligned 2x2-unit
  blocks, ``t2`` for 4x4 blocks, ...: from the coarsest level down, a block of the group whose
  entropy (of the histogram summed over its units) is below its threshold is flat: it keeps one unit,
  its highest-entropy one, and drops the others; blocks at or above it split into their sub-blocks;
  single units are kept. Regions of detail keep every unit, flat regions one per block.

Baselines at the ``budget`` token count (for ``lf-ext bench budget``; not entropy-based):

- ``random``: ``max(1, round(alpha * n))`` units of the group drawn with a fixed seed per group size
  (independent of the pixels, so still cacheable);
- ``uniform``: the same count spread evenly over the group's units in row-major order (grid subsampling).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lf_ext.layout import ImageLayout

BINS = 32
METHODS = ("none", "v1", "v2", "budget", "random", "uniform")
COUNTED = ("budget", "random", "uniform")  # keep round(alpha * n) units
DEFAULT_THRESHOLDS = (3.0, 2.0)


def unit_histograms(units: np.ndarray) -> np.ndarray:
    """(rows, cols, BINS) counts of the grey levels (ITU-R 601 luma, 32 bins) of (rows, cols, u, u, 3) units."""
    rgb = units.astype(np.uint32)
    grey = (rgb[..., 0] * 299 + rgb[..., 1] * 587 + rgb[..., 2] * 114 + 500) // 1000
    bins = (grey >> 3).reshape(*units.shape[:2], -1)
    rows, cols, pixels = bins.shape
    offsets = (np.arange(rows * cols) * BINS).reshape(rows, cols, 1)
    return np.bincount((bins + offsets).ravel(), minlength=rows * cols * BINS).reshape(rows, cols, BINS)


def entropy(histograms: np.ndarray) -> np.ndarray:
    """Shannon entropy in bits of histograms along the last axis."""
    total = histograms.sum(axis=-1, keepdims=True)
    p = histograms / np.maximum(total, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log2(p), 0.0).sum(axis=-1)


@dataclass(frozen=True)
class PatchSelection:
    """A selection method and its parameters (see the module docstring)."""

    method: str = "none"
    alpha: float = 0.3
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"patch selection method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not 0.0 < self.alpha <= 1.0 and self.method in COUNTED:
            raise ValueError(f"{self.method} alpha must be in (0, 1], got {self.alpha}")
        if self.method == "v2" and self.alpha <= 0:
            raise ValueError(f"v2 alpha must be > 0, got {self.alpha}")
        if self.method == "v1" and (not self.thresholds or any(t < 0 for t in self.thresholds)):
            raise ValueError(f"v1 needs one non-negative threshold per block level (2x2, 4x4, ...), got {self.thresholds}")

    @classmethod
    def from_settings(cls, keys) -> "PatchSelection":
        thresholds = tuple(float(t) for t in str(keys.bgobj_patch_thresholds).split(",") if t.strip())
        return cls(keys.bgobj_patch_selection, keys.bgobj_patch_alpha, thresholds)

    @property
    def enabled(self) -> bool:
        return self.method != "none"

    # ------------------------------------------------------------------ one group
    def keep(self, histograms: np.ndarray, members: np.ndarray) -> np.ndarray:
        """(rows, cols) bool: which of the ``members`` (a group's units) keep a token."""
        members = np.asarray(members, dtype=bool)
        kept = np.zeros_like(members)
        if not members.any() or not self.enabled:
            return members.copy() if not self.enabled else kept
        unit_entropy = entropy(histograms)
        index = np.flatnonzero(members)
        count = max(1, round(self.alpha * index.size))
        if self.method == "budget":
            order = index[np.argsort(-unit_entropy.ravel()[index], kind="stable")][:count]
            kept.ravel()[order] = True
        elif self.method == "random":
            kept.ravel()[np.random.default_rng(index.size).choice(index, size=count, replace=False)] = True
        elif self.method == "uniform":
            kept.ravel()[index[np.floor(np.arange(count) * index.size / count).astype(int)]] = True
        elif self.method == "v2":
            kept = members & (unit_entropy >= self.alpha * unit_entropy[members].max())
        else:
            levels = len(self.thresholds)
            for top in range(0, members.shape[0], 2**levels):
                for left in range(0, members.shape[1], 2**levels):
                    self._v1(histograms, unit_entropy, members, kept, (top, left), levels)
        return kept

    def _v1(self, histograms, unit_entropy, members, kept, corner, level) -> None:
        """Recursive block collapsing over the aligned block of 2**level units at ``corner``."""
        side = 2**level
        (top, left), (rows, cols) = corner, members.shape
        block = (slice(top, min(top + side, rows)), slice(left, min(left + side, cols)))
        inside = members[block]
        if not inside.any():
            return
        if level == 0:
            kept[block] |= inside
            return
        if entropy(histograms[block][inside].sum(axis=0)) < self.thresholds[level - 1]:
            local = np.where(inside, unit_entropy[block], -np.inf)
            r, c = np.unravel_index(int(np.argmax(local)), local.shape)  # first maximum in row-major order
            kept[top + r, left + c] = True
            return
        half = side // 2
        for dr in (0, half):
            for dc in (0, half):
                if top + dr < rows and left + dc < cols:
                    self._v1(histograms, unit_entropy, members, kept, (top + dr, left + dc), level - 1)

    def select_grid(self, units: np.ndarray, object_members: np.ndarray) -> np.ndarray:
        """(rows, cols) bool kept units of one slice of an item, each group selected on its own."""
        histograms = unit_histograms(units)
        object_members = np.asarray(object_members, dtype=bool)
        return self.keep(histograms, ~object_members) | self.keep(histograms, object_members)

    def apply(self, layout: ImageLayout, item: int, units: np.ndarray) -> ImageLayout:
        """``layout`` with ``item``'s units selected; ``units``: (slices, rows, cols, u, u, 3), one
        selection per slice."""
        members = layout.object_labels(item).numpy()
        kept = np.stack([self.select_grid(units[s], members[s]) for s in range(units.shape[0])])
        return layout.with_kept(item, torch.from_numpy(kept))
