"""The token streams a clip becomes under the ``bgobj_video_*`` options (stock templates, plain layout).

Without fast/slow, one *main* stream: every temporal slice, pooled by ``bgobj_video_pool_stride``. With
``bgobj_video_fast_slow`` (LLaVA-NeXT's ``add_faster_video``), a *slow* stream (every
``slow_stride``-th slice, at most ``num_slow``, pooled by the stride) takes the main stream's place and
a *fast* one is added (every ``fast_stride``-th slice, at most ``num_fast``, pooled twice as hard).
Each extra scale of ``bgobj_video_scales`` below 1 adds a copy of the main (or slow) stream whose
merged grid is resampled to that scale before pooling. Every stream is its own plain layout item
(its own ``<|vision_start|> … <|vision_end|>`` and M-RoPE grid, one after the other); a stream of
every ``k``-th slice spans ``k`` times the clip's slice duration, so Qwen2.5-VL's time positions stay
those of the frames' real times.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from lf_ext.config import BgObjArguments, video_scales
from lf_ext.layout import ImageLayout


@dataclass(frozen=True)
class Stream:
    """One stream of a clip: which temporal slices, how pooled and scaled."""

    slices: tuple[int, ...]
    pool: int
    scale: float = 1.0
    slice_stride: int = 1  # temporal slices between consecutive slices of the stream


def clip_streams(keys: BgObjArguments, slices: int) -> list[Stream]:
    """The streams of a clip of ``slices`` temporal slices, in token order."""
    pool = keys.bgobj_video_pool_stride
    fast = None
    if keys.bgobj_video_fast_slow:
        main = Stream(tuple(range(0, slices, keys.bgobj_video_slow_stride))[: keys.bgobj_video_num_slow], pool, 1.0,
                      keys.bgobj_video_slow_stride)  # fmt: skip
        fast = Stream(tuple(range(0, slices, keys.bgobj_video_fast_stride))[: keys.bgobj_video_num_fast], 2 * pool, 1.0,
                      keys.bgobj_video_fast_stride)  # fmt: skip
    else:
        main = Stream(tuple(range(slices)), pool)
    scaled = [replace(main, scale=scale) for scale in video_scales(keys.bgobj_video_scales) if scale < 1.0]
    return [main, *scaled, *([fast] if fast is not None else [])]


def streams_per_clip(keys: BgObjArguments) -> int:
    return len(clip_streams(keys, 1))


def stream_inputs(pixel_values: torch.Tensor, grids: list[tuple[int, int, int]], seconds: list[int], merge: int,
                  keys: BgObjArguments) -> tuple[torch.Tensor, torch.Tensor, ImageLayout]:  # fmt: skip
    """Pixel rows, ``image_grid_thw`` and plain layout of every clip's streams, from the clips' stock pixel rows
    (``grids``: per clip ``(slices, rows, cols)`` in merged units; rows of one slice are contiguous)."""
    rows_out, grid_thw, items, pools, scales, steps = [], [], [], [], [], []
    offset = 0
    for (slices, rows, cols), second in zip(grids, seconds):
        per_slice = rows * cols * merge * merge
        clip = pixel_values[offset : offset + slices * per_slice].reshape(slices, per_slice, -1)
        offset += slices * per_slice
        for stream in clip_streams(keys, slices):
            rows_out.append(clip[list(stream.slices)].reshape(-1, pixel_values.shape[-1]))
            grid_thw.append([len(stream.slices), rows * merge, cols * merge])
            items.append((len(stream.slices), rows, cols))
            pools.append(stream.pool)
            scales.append(stream.scale)
            steps.append(second * stream.slice_stride)
    if offset != pixel_values.shape[0]:
        raise ValueError(f"the clips' grids cover {offset} pixel rows, the processor gave {pixel_values.shape[0]}")
    layout = ImageLayout(tuple(items), torch.zeros(sum(t * r * c for t, r, c in items), dtype=torch.int8), separated=False,
                         slice_seconds=tuple(steps), pools=tuple(pools), pool_mode=keys.bgobj_video_pool_mode,
                         scales=tuple(scales))  # fmt: skip
    return torch.cat(rows_out), torch.tensor(grid_thw, dtype=torch.long), layout
