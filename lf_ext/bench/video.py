"""``lf-ext bench video``: visual tokens and time to first token of a fixed-camera clip, four ways, same run.

A synthetic recording (a textured plate, one object moving on it, ~10 % of the units per frame) is cut
into clips of ``frames`` frames; each clip is LLaMA-Factory's frame list, so sampling is exact.

- **stock**: the stock template's video layout, every unit of every slice through the tower and the LLM;
- **motion pruning** (EVS-style baseline, at the bgobj miss's token count): the stock template's clip with
  its first slice whole and, in later slices, only the units whose pixels changed most since the
  previous slice (RGB L1), each kept token at its stock position;
- **bgobj miss**: the separated clip (``motion`` split: the background is what never moves), encoded and
  prefilled in full, the prefix cached;
- **bgobj hit**: the next clip of the camera (the window moved on by one temporal slice): the cached
  background verified on its first slice, only its object units encoded and prefilled;
- **limit**: the unavoidable work of that hit (the tower on its object units + the prefill after
  ``[BG_END]``), from the same run.

TTFTs end with the first token's logits; the bgobj rows include the clip's split (``mask_ms``: the
pixel comparison), the processor's own work is excluded for all. Then the hit rate of a stream of
``stream_clips`` sliding windows (one temporal slice apart) through the background cache, reuse
policy with refinement: hits depend on pixels only, so the stream runs on the ``stream_shape`` model
(default ``tiny``) with the same processor geometry.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lf_ext.bench.report import machine_info, print_table, write_json
from lf_ext.bench.ttft import (
    TIMING_SHAPES,
    Loaded,
    background_plate,
    checkpoint,
    load,
    plain_ttft,
    timed_first_token,
)
from lf_ext.eval.prompts import encode_request
from lf_ext.inference.metrics import add_listener, remove_listener
from lf_ext.layout import LAYOUT_KEY, ImageLayout, find_spans

QUESTION = "What is moving in the video?"
UNIT = 28


def recording(px: int, frames: int, object_fraction: float = 0.10, seed: int = 0) -> list[Image.Image]:
    """A fixed camera: a textured plate and a square of random texture moving round a slow loop."""
    rng = np.random.default_rng(seed)
    plate = background_plate(px, rng)
    side = int(round(px * object_fraction**0.5))  # ~object_fraction of the frame
    sprite = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    centre, radius = (px - side) / 2, px / 6
    out = []
    for f in range(frames):
        angle = 2 * np.pi * f / 96  # one loop every 96 frames: about a unit per frame on 448 px
        x, y = int(round(centre + radius * np.cos(angle))), int(round(centre + radius * np.sin(angle)))
        frame = plate.copy()
        frame[y : y + side, x : x + side] = sprite
        out.append(Image.fromarray(frame))
    return out


class MaskClock:
    """Collects the clip-split time the plugin reports (``mask``)."""

    def __init__(self):
        self.seconds = 0.0

    def __call__(self, component: str, seconds: float) -> None:
        if component == "mask":
            self.seconds += seconds


def _video_request(loaded: Loaded, template, frames: list[Image.Image]) -> dict:
    return encode_request(template, loaded.tokenizer, loaded.processor, QUESTION, [], videos=[frames])


def stock_video_ttft(loaded: Loaded, request: dict) -> dict[str, float]:
    """The stock clip: the tower over every unit of every slice, the prefill of every token."""
    model, family, ids = loaded.model, loaded.family, request["inputs"]
    return timed_first_token(loaded, ids, lambda: family.stock_features(model, request), int(model.config.video_token_id),
                             lambda: family.stock_positions(model, ids, request))  # fmt: skip


def motion_pruned(loaded: Loaded, stock: dict, keep_tokens: int) -> tuple[torch.Tensor, torch.Tensor, ImageLayout]:
    """The stock clip pruned EVS-style to ``keep_tokens`` tokens: (ids, pixel_values, plain layout)."""
    family = loaded.family
    grid = tuple(int(v) for v in stock["video_grid_thw"][0])
    merge = loaded.processor.video_processor.merge_size
    slices, rows, cols = grid[0], grid[1] // merge, grid[2] // merge
    scaffold = ImageLayout(((slices, rows, cols),), torch.zeros(slices * rows * cols, dtype=torch.int8), separated=False,
                           slice_seconds=(1,))  # fmt: skip
    pixels = family.video_pixel_units(loaded.processor)
    frames = pixels.units(stock["pixel_values_videos"], scaffold, 0).astype(np.int16)  # first frame of each slice
    change = np.abs(frames[1:] - frames[:-1]).mean(axis=(3, 4, 5))  # (slices - 1, rows, cols)
    budget = max(0, keep_tokens - rows * cols)
    kept = np.zeros((slices, rows, cols), dtype=bool)
    kept[0] = True  # EVS keeps the first slice whole
    order = np.argsort(-change.reshape(-1), kind="stable")[:budget]
    kept[1:].reshape(-1)[order] = True
    layout = scaffold.with_kept(0, torch.from_numpy(kept))
    video, image = int(loaded.model.config.video_token_id), family.image_token_id(loaded.model.config)
    row = stock["inputs"][0]
    at = (row == video).nonzero().reshape(-1)
    ids = torch.cat([row[: at[0]], torch.full((layout.n_tokens(0),), image, dtype=row.dtype), row[at[-1] + 1 :]]).unsqueeze(0)
    return ids, stock["pixel_values_videos"], layout


def _split(loaded: Loaded, frames: list[Image.Image]) -> tuple[dict, float]:
    """The bgobj clip request and the time the plugin spent splitting it (ms)."""
    clock = MaskClock()
    add_listener(clock)
    try:
        request = _video_request(loaded, loaded.bgobj_template, frames)
    finally:
        remove_listener(clock)
    return request, clock.seconds * 1000


def measure(loaded: Loaded, record: list[Image.Image], frames: int, runs: int, warmup: int) -> dict:
    """Medians of stock, motion pruning, miss, hit and limit for the first two windows of ``record``."""
    first, second = record[:frames], record[2 : 2 + frames]
    stock = _video_request(loaded, loaded.stock_template, first)
    reuse = loaded.reuse()
    samples: dict[str, list[float]] = {k: [] for k in ("stock", "motion_pruning", "miss", "hit", "limit", "mask")}
    parts: dict[str, list[float]] = {}
    tokens: dict[str, int] = {}
    for round_ in range(warmup + runs):
        reuse.cache.clear()
        stock_ms = stock_video_ttft(loaded, stock)
        request, miss_mask = _split(loaded, first)
        miss = reuse.prefill(request["inputs"], request["pixel_values"], ImageLayout.unpack(request[LAYOUT_KEY]))
        next_request, hit_mask = _split(loaded, second)
        hit = reuse.prefill(next_request["inputs"], next_request["pixel_values"], ImageLayout.unpack(next_request[LAYOUT_KEY]))
        if (miss.outcome.kind, hit.outcome.kind) != ("miss", "hit"):
            raise RuntimeError(f"expected a miss then a hit, got {miss.outcome.kind} then {hit.outcome.kind}")
        layout = miss.layout
        pruned = motion_pruned(loaded, stock, layout.n_tokens(0))
        evs_ms = plain_ttft(loaded, *pruned)
        print(f"    round {round_ + 1}/{warmup + runs}{'' if round_ >= warmup else ' (warm-up)'}: stock {stock_ms['total']:.0f} ms, "
              f"motion pruning {evs_ms['total']:.0f} ms, miss {miss_mask + miss.outcome.ms['total']:.0f} ms, "
              f"hit {hit_mask + hit.outcome.ms['total']:.0f} ms", flush=True)  # fmt: skip
        if round_ < warmup:
            continue
        samples["stock"].append(stock_ms["total"])
        samples["motion_pruning"].append(evs_ms["total"])
        samples["miss"].append(miss_mask + miss.outcome.ms["total"])
        samples["hit"].append(hit_mask + hit.outcome.ms["total"])
        samples["limit"].append(hit.outcome.ms["vision"] + hit.outcome.ms["prefill"])
        samples["mask"].append(hit_mask)
        for name, ms in (("stock", stock_ms), ("motion_pruning", evs_ms), ("miss", miss.outcome.ms), ("hit", hit.outcome.ms)):
            for part, value in ms.items():
                parts.setdefault(f"{name}_{part}_ms", []).append(value)
        tokens = {"stock": int((stock["inputs"] == loaded.model.config.video_token_id).sum()),
                  "motion_pruning": pruned[2].n_tokens(0), "bgobj": layout.n_tokens(0),
                  "bgobj_background": layout.n_background(0), "hit_encoded": hit.layout.n_object(0)}  # fmt: skip
    (span,) = find_spans(hit.input_ids[0].tolist(), loaded.family.separator_tokens(loaded.model))
    med = {k: float(statistics.median(v)) for k, v in samples.items()}
    return {
        "visual_tokens": tokens, "token_fraction": tokens["bgobj"] / tokens["stock"], "hit_prefill_tokens": hit.input_ids.shape[1] - span.prefix_end,
        "object_units_first_slice": int(layout.object_labels(0)[0].sum()), "units_per_slice": int(np.prod(layout.grids[0][1:])),
        **{f"{k}_ms": v for k, v in med.items()},
        "hit_speedup": med["stock"] / med["hit"], "limit_speedup": med["stock"] / med["limit"],
        "hit_vs_limit": med["hit"] / med["limit"], "motion_pruning_speedup": med["stock"] / med["motion_pruning"],
        "components_ms": {k: float(statistics.median(v)) for k, v in sorted(parts.items())}, "samples_ms": samples,
    }  # fmt: skip


def stream_hit_rate(loaded: Loaded, record: list[Image.Image], frames: int, clips: int, step: int) -> dict:
    """Outcomes of ``clips`` sliding windows, ``step`` frames apart, through one cache (reuse, refine)."""
    reuse = loaded.reuse()
    kinds = []
    for k in range(clips):
        request = _video_request(loaded, loaded.bgobj_template, record[k * step : k * step + frames])
        out = reuse.prefill(request["inputs"], request["pixel_values"], ImageLayout.unpack(request[LAYOUT_KEY]))
        kinds.append(out.outcome.kind)
    counts = {kind: kinds.count(kind) for kind in ("hit", "miss", "rejection")}
    return {"clips": clips, "step_frames": step, **counts, "hit_rate": counts["hit"] / clips, "outcomes": kinds,
            "entries": reuse.cache.stats()["entries"]}  # fmt: skip


def run_bench_video(json_out: str | Path, shape: str = "2b", px: int = 448, frames: int = 16, runs: int = 3, warmup: int = 1,
                    stream_clips: int = 64, stream_shape: str = "tiny", object_fraction: float = 0.10,
                    checkpoints: str | Path = "work/bench/checkpoints") -> dict:  # fmt: skip
    """Measure, print the table, write JSON."""
    torch.manual_seed(0)
    step = 2  # one temporal slice
    record = recording(px, frames + step * (stream_clips - 1), object_fraction)
    video_args = dict(video_max_pixels=px * px, video_fps=2.0, video_maxlen=frames, bgobj_mask_provider="motion")
    dtype = "bfloat16" if shape in TIMING_SHAPES else "float32"
    loaded = load(checkpoint(shape, checkpoints), px, dtype, **video_args)
    started = time.perf_counter()
    row = measure(loaded, record, frames, runs, warmup)
    row.update(shape=shape, dtype=dtype, image_px=px, frames=frames, runs=runs, seconds=time.perf_counter() - started)
    del loaded
    streamer = load(checkpoint(stream_shape, checkpoints), px, "float32", **video_args)
    stream = stream_hit_rate(streamer, record, frames, stream_clips, step)
    stream["shape"] = stream_shape
    print(f"\nclip of {frames} frames at {px} px, {shape} shape ({dtype}); TTFT medians of {runs} runs after {warmup} warm-up")
    tok = row["visual_tokens"]
    rows = [{"path": "stock video", "tokens": tok["stock"], "ttft_ms": row["stock_ms"], "speedup": 1.0},
            {"path": "motion pruning (EVS-style)", "tokens": tok["motion_pruning"], "ttft_ms": row["motion_pruning_ms"],
             "speedup": row["motion_pruning_speedup"]},
            {"path": "bgobj miss", "tokens": tok["bgobj"], "ttft_ms": row["miss_ms"], "speedup": row["stock_ms"] / row["miss_ms"]},
            {"path": "bgobj hit (next clip)", "tokens": tok["bgobj"], "ttft_ms": row["hit_ms"], "speedup": row["hit_speedup"]},
            {"path": "hit limit", "tokens": tok["hit_encoded"], "ttft_ms": row["limit_ms"], "speedup": row["limit_speedup"]}]  # fmt: skip
    print_table(rows, [("path", "{}"), ("tokens", "{}"), ("ttft_ms", "{:.0f}"), ("speedup", "{:.2f}")])
    print(f"bgobj visual tokens {row['token_fraction']:.1%} of stock ({tok['bgobj_background']} background, once); "
          f"hit within {row['hit_vs_limit']:.2f}x of its limit")  # fmt: skip
    print(f"stream of {stream_clips} clips ({stream_shape} shape, windows {step} frames apart): {stream['hit']} hits, "
          f"{stream['rejection']} rejections, {stream['miss']} misses: hit rate {stream['hit_rate']:.1%}")  # fmt: skip
    payload = {"benchmark": "video", "machine": machine_info(), "row": row, "stream": stream}
    write_json(json_out, payload)
    return payload
