"""Probe fingerprints and the exact per-unit distance used to verify a cache hit.

A *probe* is one token unit at a fixed, stratified grid position (the same positions for every
image of a grid shape). An image's fingerprint is the mean of all pixel values (all channels) of
each probe unit, rounded to an integer 0-255.

Why this is a safe pre-filter: the per-unit distance is the mean absolute difference (MAD) over
all values of the unit, and ``|mean(a) - mean(b)| <= mean|a - b|``. Rounding moves each mean by at
most 0.5, so a unit within ``threshold`` of the stored one has fingerprints that differ by at most
``floor(threshold) + 1``. A probe that differs by more *proves* that the unit fails verification,
so the filter never drops an entry that would verify.
"""

from __future__ import annotations

import math

import numpy as np

DEFAULT_PROBES = 64
NOT_BACKGROUND = -1  # fingerprint value of a probe that is not in the entry's background set


def probe_positions(rows: int, cols: int, count: int = DEFAULT_PROBES) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (row, col) positions of up to ``count`` probe units: the centres of an
    ``nr x nc`` split of the grid, as square as the aspect ratio allows."""
    if rows < 1 or cols < 1 or count < 1:
        raise ValueError(f"probe grid needs rows, cols, count >= 1, got {rows}, {cols}, {count}")
    count = min(count, rows * cols)
    nr = max(1, min(rows, round(math.sqrt(count * rows / cols))))
    nc = max(1, min(cols, count // nr))
    r = ((np.arange(nr) + 0.5) * rows / nr).astype(np.int64)
    c = ((np.arange(nc) + 0.5) * cols / nc).astype(np.int64)
    rr, cc = np.meshgrid(r, c, indexing="ij")
    return rr.ravel(), cc.ravel()


def fingerprint(units: np.ndarray, count: int = DEFAULT_PROBES) -> np.ndarray:
    """Rounded mean value of each probe unit of ``units`` (rows, cols, u, u, 3) as uint8 (P,)."""
    rr, cc = probe_positions(units.shape[0], units.shape[1], count)
    means = units[rr, cc].reshape(len(rr), -1).mean(axis=1)
    return np.rint(means).astype(np.uint8)


def masked_fingerprint(fp: np.ndarray, background: np.ndarray, count: int = DEFAULT_PROBES) -> np.ndarray:
    """``fp`` as int16 with ``NOT_BACKGROUND`` where the probe unit is not background."""
    rr, cc = probe_positions(background.shape[0], background.shape[1], count)
    return np.where(background[rr, cc], fp.astype(np.int16), np.int16(NOT_BACKGROUND)).astype(np.int16)


def probe_tolerance(threshold: float) -> int:
    """Largest fingerprint difference a unit within ``threshold`` can show (see module doc)."""
    return math.floor(threshold + 1e-9) + 1


def max_unit_distance(stored: np.ndarray, units: np.ndarray, index: np.ndarray, stop_above: float | None = None,
                      chunk: int = 128) -> float:  # fmt: skip
    """Largest per-unit MAD (0-255 scale) between ``stored`` (n, u, u, 3) and the units ``index``
    (flat row-major positions) of ``units`` (rows, cols, u, u, 3), both uint8.

    With ``stop_above`` it returns as soon as a chunk exceeds it (the value is then a lower bound
    of the true maximum, still above ``stop_above``)."""
    worst = 0.0
    for _, distances in _chunked_unit_distances(stored, units, index, chunk):
        worst = max(worst, float(distances.max()))
        if stop_above is not None and worst > stop_above:
            break
    return worst


def unit_distances(stored: np.ndarray, units: np.ndarray, index: np.ndarray, chunk: int = 128) -> np.ndarray:
    """Per-unit MAD (n,) float between ``stored`` and the units ``index`` of ``units`` (as above)."""
    out = np.zeros(len(index), np.float64)
    for start, distances in _chunked_unit_distances(stored, units, index, chunk):
        out[start : start + len(distances)] = distances
    return out


def _chunked_unit_distances(stored: np.ndarray, units: np.ndarray, index: np.ndarray, chunk: int):
    """Yields (start, per-unit MAD of the chunk). Works in chunks with reused buffers (a few hundred
    KB, instead of page-faulting several MB per call)."""
    n = len(index)
    if n == 0:
        return
    flat, stored = units.reshape(units.shape[0] * units.shape[1], -1), stored.reshape(n, -1)
    size = min(chunk, n)
    gathered, high, low = (np.empty((size, flat.shape[1]), np.uint8) for _ in range(3))
    sums = np.empty(size, np.uint32)
    for start in range(0, n, size):
        k = min(n, start + size) - start
        np.take(flat, index[start : start + k], axis=0, out=gathered[:k], mode="clip")  # in range
        np.maximum(stored[start : start + k], gathered[:k], out=high[:k])
        np.minimum(stored[start : start + k], gathered[:k], out=low[:k])
        np.subtract(high[:k], low[:k], out=high[:k])  # |a - b| without leaving uint8
        np.add.reduce(high[:k], axis=1, dtype=np.uint32, out=sums[:k])
        yield start, sums[:k] / flat.shape[1]
