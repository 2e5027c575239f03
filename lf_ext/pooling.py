"""Resampling of a clip's visual tokens after the merger: scaling and 2-D pooling (LLaVA-NeXT's ``get_2dPool``).

Each temporal slice's ``(rows, cols)`` grid of merged tokens is first scaled, if its item has a scale
below 1 (bilinear, ``align_corners=False``, to ``round(rows * scale) x round(cols * scale)``: the extra
scales of ``bgobj_video_scales``), then pooled to ``(ceil(rows / stride), ceil(cols / stride))``:
``average`` and ``max`` over ``stride x stride`` cells (a cell cut by the grid's edge pools the tokens
it has), ``bilinear`` by bilinear resampling to that size. Positions are those of the resulting grid
(:mod:`lf_ext.families.qwen.positions`), as if the clip had that grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lf_ext.layout import Group, ImageLayout


def pool_grid(tokens: torch.Tensor, grid: tuple[int, int, int], stride: int, mode: str,
              scaled: tuple[int, int] | None = None) -> torch.Tensor:  # fmt: skip
    """``[slices * rows * cols, hidden]`` tokens in ``(slice, row, col)`` order -> the resampled grid's, same
    order; ``scaled``: ``(rows, cols)`` to scale to first (None: no scaling)."""
    slices, rows, cols = grid
    if stride == 1 and (scaled is None or scaled == (rows, cols)):
        return tokens
    maps = tokens.reshape(slices, rows, cols, -1).permute(0, 3, 1, 2)  # (slices, hidden, rows, cols)
    if scaled is not None and scaled != (rows, cols):
        maps = F.interpolate(maps.float(), size=scaled, mode="bilinear", align_corners=False).to(tokens.dtype)
        rows, cols = scaled
    size = (-(-rows // stride), -(-cols // stride))
    if stride == 1:
        pooled = maps
    elif mode == "average":
        pooled = F.avg_pool2d(maps.float(), stride, stride, ceil_mode=True).to(tokens.dtype)
    elif mode == "max":
        pooled = F.max_pool2d(maps, stride, stride, ceil_mode=True)
    elif mode == "bilinear":
        pooled = F.interpolate(maps.float(), size=size, mode="bilinear", align_corners=False).to(tokens.dtype)
    else:
        raise ValueError(f"unknown pooling mode {mode!r} (average, max, bilinear)")
    return pooled.permute(0, 2, 3, 1).reshape(-1, tokens.shape[-1])


def pool_layout_tokens(tokens: torch.Tensor, layout: ImageLayout) -> torch.Tensor:
    """Every item's tokens (item after item, as the family encodes them), its pooled items pooled."""
    if not layout.pooled:
        return tokens
    out, at = [], 0
    for item in range(len(layout)):
        count = layout.count(Group.BACKGROUND, item) + layout.count(Group.OBJECT, item)  # the units encoded
        out.append(pool_grid(tokens[at : at + count], layout.grids[item], layout.pools[item], layout.pool_mode,
                             layout.scaled_grid(item)))  # fmt: skip
        at += count
    return torch.cat(out)
