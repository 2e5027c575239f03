"""Background cache lookup latency: hit, miss and rejection with many entries under one key.

Backgrounds are random textures (uniform noise per pixel) with a random object rectangle. Units
are small (``unit`` = 4 px instead of Qwen2-VL's 28) to keep the filled cache near 470 MB; the
candidate search does not depend on the unit size, only verification does, so one extra row
times a hit at the real Qwen2-VL unit size (28 px) with a single entry.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from lf_ext.bench.report import machine_info, median_ms, print_table, write_json
from lf_ext.cache import BackgroundCache, probe_positions

KEY = "bench|model=random|grid={rows}x{cols}|unit={unit}"


def _background(seed: int, index: int, grid: tuple[int, int], unit: int) -> tuple[np.ndarray, np.ndarray]:
    """Units (rows, cols, u, u, 3) and object labels (rows, cols) of background ``index``."""
    rng = np.random.default_rng((seed, 0, index))
    rows, cols = grid
    units = rng.integers(0, 256, (rows, cols, unit, unit, 3), dtype=np.uint8)
    labels = np.zeros(grid, bool)
    h, w = rng.integers(rows // 8, rows // 3 + 1), rng.integers(cols // 8, cols // 3 + 1)
    top, left = rng.integers(0, rows - h + 1), rng.integers(0, cols - w + 1)
    labels[top : top + h, left : left + w] = True
    return units, labels


def _fill(cache: BackgroundCache, key: str, entries: int, grid: tuple[int, int], unit: int, seed: int) -> float:
    start = time.perf_counter()
    for index in range(entries):
        units, labels = _background(seed, index, grid, unit)
        cache.insert(key, units, labels, {"bg_tokens": torch.full((16, 8), float(index))})
    return time.perf_counter() - start


def _queries(seed: int, grid: tuple[int, int], unit: int) -> dict[str, np.ndarray]:
    """Hit (new object in the entry's object region), miss (unseen background), rejection (one
    background unit changed: a probe unit, or a unit only full verification sees, if the grid has
    units that are not probes)."""
    units, labels = _background(seed, 0, grid, unit)
    hit = units.copy()
    hit[labels] = 255 - hit[labels]
    miss = np.random.default_rng((seed, 1, 0)).integers(0, 256, units.shape, dtype=np.uint8)
    queries = {"hit": hit, "miss": miss}
    probes = np.zeros(grid, bool)
    probes[probe_positions(*grid)] = True
    for name, where in (("rejection (probe unit)", probes & ~labels), ("rejection (verified unit)", ~probes & ~labels)):
        if where.any():
            image = units.copy()
            r, c = np.argwhere(where)[0]
            image[r, c] = 0 if image[r, c].mean() > 127 else 255  # moves the unit's mean by > 100
            queries[name] = image
    return queries


def _time_case(cache: BackgroundCache, key: str, units: np.ndarray, repeats: int) -> dict:
    before = cache.stats()
    ms = median_ms(lambda: cache.lookup(key, units), repeats)
    after = cache.stats()
    outcome = max(("hits", "misses", "rejections"), key=lambda k: after[k] - before[k])
    return {"median_ms": ms, "outcome": outcome, "verifications_per_lookup": (after["verifications"] - before["verifications"]) / repeats}


def _qwen_unit_hit(grid: tuple[int, int], repeats: int, seed: int) -> dict:
    cache = BackgroundCache(1 << 30)
    key = KEY.format(rows=grid[0], cols=grid[1], unit=28)
    units, labels = _background(seed, 0, grid, 28)
    cache.insert(key, units, labels, {"bg_tokens": torch.zeros(16, 8)})
    return {"case": "hit, u=28, 1 entry", "entries": 1, **_time_case(cache, key, units, repeats)}


def run_bench_cache_lookup(json_out: str | Path, entries: int = 10000, grid: tuple[int, int] = (32, 32),
                           repeats: int = 200, unit: int = 4, seed: int = 0) -> dict:  # fmt: skip
    """Fill one context key with ``entries`` backgrounds; print and write median lookup latencies."""
    grid = tuple(grid)
    key = KEY.format(rows=grid[0], cols=grid[1], unit=unit)
    cache = BackgroundCache(1 << 40)
    fill_s = _fill(cache, key, entries, grid, unit, seed)
    rows = [{"case": name, "entries": entries, **_time_case(cache, key, units, repeats)}
            for name, units in _queries(seed, grid, unit).items()]  # fmt: skip
    rows.append(_qwen_unit_hit(grid, max(10, repeats // 10), seed))
    print_table(rows, [("case", "{}"), ("entries", "{}"), ("median_ms", "{:.3f}"), ("outcome", "{}"),
                       ("verifications_per_lookup", "{:.1f}")])  # fmt: skip
    stats = cache.stats()
    payload = {"machine": machine_info(), "settings": {"entries": entries, "grid": list(grid), "unit": unit, "repeats": repeats,
               "seed": seed, "unit_threshold": cache.unit_threshold, "max_candidates": cache.max_candidates},
               "fill_seconds": fill_s, "cache_bytes": stats["bytes"], "rows": rows}  # fmt: skip
    write_json(json_out, payload)
    return payload
