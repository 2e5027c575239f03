"""Unsupervised masks: the object is the part of the image with the highest pixel entropy."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from lf_ext.masks.base import MaskRequest
from lf_ext.masks.registry import register_mask_provider

BINS = 32  # grey levels are binned by ``>> 3``


@lru_cache(maxsize=32)
def _bin_base(height: int, width: int, unit: int) -> np.ndarray:
    """Per pixel, ``BINS * index of its token unit`` (row-major units); cached per geometry."""
    cols = width // unit
    unit_id = (np.arange(height) // unit)[:, None] * cols + (np.arange(width) // unit)[None, :]
    return (unit_id * BINS).astype(np.int32)


def unit_entropy(gray: np.ndarray, unit: int) -> np.ndarray:
    """Shannon entropy (bits) of the grey-level histogram (32 bins) of each token unit; (rows, cols)."""
    rows, cols = gray.shape[0] // unit, gray.shape[1] // unit
    gray = gray[: rows * unit, : cols * unit]
    index = _bin_base(rows * unit, cols * unit, unit) + (gray >> 3)  # 256 grey levels -> 32 bins
    counts = np.bincount(index.ravel(), minlength=rows * cols * BINS).reshape(rows * cols, BINS)
    p = counts / float(unit * unit)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log2(p), 0.0).sum(axis=1)
    return h.reshape(rows, cols)


@register_mask_provider("entropy")
class EntropyMaskProvider:
    """Object = the top ``alpha`` fraction of units by entropy, or units above ``threshold`` bits.

    Args:
        alpha: fraction of units kept as object (budget mode; at least one unit).
        threshold: when > 0, use a fixed entropy threshold in bits instead of ``alpha``.
    """

    def __init__(self, alpha: float = 0.25, threshold: float = 0.0):
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"entropy alpha must be in (0, 1], got {alpha}")
        self.alpha, self.threshold = alpha, threshold

    @classmethod
    def from_settings(cls, settings, **context) -> "EntropyMaskProvider":
        return cls(alpha=settings.bgobj_entropy_alpha, threshold=settings.bgobj_entropy_threshold)

    def __call__(self, request: MaskRequest) -> np.ndarray:
        gray = np.asarray(request.image.convert("L"))
        h = unit_entropy(gray, request.unit)
        if self.threshold > 0:
            labels = h > self.threshold
        else:
            keep = max(1, round(self.alpha * h.size))
            order = np.argsort(-h, axis=None, kind="stable")[:keep]
            labels = np.zeros(h.size, dtype=bool)
            labels[order] = True
            labels = labels.reshape(h.shape)
        unit = request.unit
        mask = np.repeat(np.repeat(labels, unit, axis=0), unit, axis=1).astype(np.float32)
        out = np.zeros((gray.shape[0], gray.shape[1]), dtype=np.float32)
        out[: mask.shape[0], : mask.shape[1]] = mask
        return out
