"""``lf-ext bench stream``: a fixed camera with a moving object and a ticking clock, served frame by frame.

The stream: one textured background; in every frame a new object (a unit-aligned square covering
about ``object_fraction`` of the units) stands at one of ``positions`` places (seeded random order),
and a small "clock" (3 units in the top-right corner) shows new content. The mask is the object's
square only, as a detector would give it: the clock is background to the mask, yet it changes in
every frame, so no frame's background matches an earlier frame exactly.

Four ways to answer each frame's first token, same model instance (random weights, loaded through
LLaMA-Factory's loader with ``qwen2_vl_bgobj``):

- ``stock``: the stock layout (full vision tower, every token prefilled); its work does not depend
  on the frame, so it is timed on the first ``stock_frames`` frames and its median used for all;
- ``exact``: ``bgobj_cache_policy: exact``: only an entry with the frame's own split may serve, and
  the clock (background to the mask) fails verification in every frame: every frame is recomputed;
- ``cache``: policy ``reuse`` with ``bgobj_cache_refine: false``: every frame after the first is
  a rejection (the clock fails verification), answered and inserted like a miss;
- ``cache+refine``: the default (``reuse``, refine): a rejection drops the units that failed (the
  clock) from the frame's own background and caches that, so frames at a place seen before hit.

``hit_rate_after_first_visit``: hits among the frames whose place was visited before.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lf_ext.bench.report import machine_info, print_table, write_json
from lf_ext.bench.ttft import TIMING_SHAPES, UNIT, background_plate, checkpoint, load, stock_ttft
from lf_ext.layout import LAYOUT_KEY

CLOCK_UNITS = 3


def stream_frames(px: int, frames: int, positions: int, object_fraction: float, seed: int = 0, unit: int = UNIT):
    """[(PIL frame, (rows, cols) bool object labels, position index)] for the stream described above."""
    rng = np.random.default_rng(seed)
    units = px // unit
    side = max(1, round(units * object_fraction**0.5))
    if positions * side > units or side >= units - 1:
        raise ValueError(f"{positions} places for a {side}-unit object do not fit a {units}-unit row")
    plate = background_plate(px, rng)
    top = (units - side) // 2 + 1  # below the clock row
    lefts = [round(i * (units - side) / max(1, positions - 1)) for i in range(positions)]
    out = []
    for _ in range(frames):
        place = int(rng.integers(positions))
        frame = plate.copy()
        left = lefts[place]
        frame[top * unit : (top + side) * unit, left * unit : (left + side) * unit] = rng.integers(
            0, 256, (side * unit, side * unit, 3), dtype=np.uint8)  # fmt: skip
        frame[:unit, (units - CLOCK_UNITS) * unit : units * unit] = rng.integers(0, 256, (unit, CLOCK_UNITS * unit, 3), dtype=np.uint8)
        labels = np.zeros((units, units), bool)
        labels[top : top + side, left : left + side] = True
        out.append((Image.fromarray(frame), labels, place))
    return out


def _serve(reuse, loaded, frames) -> list[dict]:
    served = []
    for index, (frame, labels, place) in enumerate(frames):
        request = loaded.bgobj_request(frame, labels)
        outcome = reuse.prefill(request["inputs"], request["pixel_values"], request[LAYOUT_KEY]).outcome
        served.append({"frame": index, "place": place, "kind": outcome.kind, "refined": outcome.refined,
                       "object_units": outcome.object_units, "ms": outcome.ms["total"]})  # fmt: skip
        print(f"    frame {index + 1}/{len(frames)} (place {place}): {outcome.kind}"
              f"{' (refined)' if outcome.refined else ''}, {outcome.object_units} object units, {outcome.ms['total']:.0f} ms", flush=True)  # fmt: skip
    return served


def _row(mode: str, ms: list[float], served: list[dict] | None, stock_ms: float) -> dict:
    kinds = [s["kind"] for s in served] if served else []
    mean = float(np.mean(ms))
    places = [s["place"] for s in served or []]
    revisits = [k for k in range(len(places)) if places[k] in places[:k]]
    hit_rate = sum(kinds[k] == "hit" for k in revisits) / len(revisits) if served and revisits else None
    return {"mode": mode, "frames": len(ms), "hits": kinds.count("hit"), "rejections": kinds.count("rejection"),
            "refined": sum(bool(s["refined"]) for s in served or []), "misses": kinds.count("miss"),
            "hit_rate_after_first_visit": hit_rate, "median_ms": float(statistics.median(ms)), "mean_ms": mean,
            "total_s": sum(ms) / 1000, "speedup_mean": stock_ms / mean}  # fmt: skip


COLUMNS = [("mode", "{}"), ("frames", "{}"), ("hits", "{}"), ("rejections", "{}"), ("refined", "{}"), ("misses", "{}"),
           ("hit_rate_after_first_visit", "{:.2f}"), ("median_ms", "{:.0f}"), ("mean_ms", "{:.0f}"), ("total_s", "{:.1f}"),
           ("speedup_mean", "{:.2f}")]  # fmt: skip


def run_bench_stream(json_out: str | Path, shape: str = "2b", px: int = 448, frames: int = 16, positions: int = 3,
                     object_fraction: float = 0.1, stock_frames: int = 3, seed: int = 0,
                     checkpoints: str | Path = "work/bench/checkpoints", arch: str = "qwen2_vl",
                     modes: tuple[str, ...] = ("exact", "cache", "cache+refine")) -> dict:  # fmt: skip
    """Serve the stream each of ``modes`` ways, print the table, write JSON (rows + every frame's outcome)."""
    known = {"exact": (False, "exact"), "cache": (False, "reuse"), "cache+refine": (True, "reuse")}
    for mode in modes:
        if mode not in known:
            raise ValueError(f"unknown stream mode '{mode}'; known: {', '.join(known)}")
    started = time.perf_counter()
    torch.manual_seed(seed)
    dtype = "bfloat16" if shape in TIMING_SHAPES else "float32"
    loaded = load(checkpoint(shape, checkpoints, arch), px, dtype)
    unit = loaded.family.pixel_units(loaded.processor.image_processor).unit
    stream = stream_frames(px, frames, positions, object_fraction, seed, unit)
    units = stream[0][1].size
    print(f"stream: {frames} frames, {shape} {px} px, {units} units, object at {positions} places, clock {CLOCK_UNITS} units", flush=True)
    stock_ms = []
    for index in range(min(stock_frames, frames)):
        stock_ms.append(stock_ttft(loaded, loaded.stock_request(stream[index][0]))["total"])
        print(f"    stock frame {index + 1}: {stock_ms[-1]:.0f} ms", flush=True)
    stock = float(statistics.median(stock_ms))
    rows, per_frame = [_row("stock", [stock] * frames, None, stock)], {}
    for mode in modes:
        refine, policy = known[mode]
        print(f"  {mode}:", flush=True)
        per_frame[mode] = _serve(loaded.reuse(refine=refine, policy=policy), loaded, stream)
        rows.append(_row(mode, [s["ms"] for s in per_frame[mode]], per_frame[mode], stock))
    print(f"\nStream TTFT (ms; stock = median of {len(stock_ms)} frames; {time.perf_counter() - started:.0f} s)")
    print_table(rows, COLUMNS)
    result = {"benchmark": "stream", "machine": machine_info(), "arch": arch, "shape": shape, "image_px": px, "dtype": dtype,
              "frames": frames, "positions": positions, "object_fraction": object_fraction, "clock_units": CLOCK_UNITS,
              "stock_samples_ms": stock_ms, "rows": rows, "per_frame": per_frame}  # fmt: skip
    write_json(json_out, result)
    return result
