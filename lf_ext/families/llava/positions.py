"""1-D position ids of separated LLaVA sequences: every visual token at its unit's stock (raster) position.

Stock LLaVA-1.5 gives an image's 576 tokens the positions ``s … s + 575`` in raster order (``s``: the
first one's). In the separated order a unit's place in the sequence depends on the mask, so sequential
positions would tell the LLM a different neighbourhood for every mask. Here, for an item whose
``[BG_START]`` sits at ``s - 1``, a kept unit ``u`` (flat raster index) takes ``s + u`` whether it is in
the background or the object group; ``[BG_END]`` takes ``s + N`` (``N`` units: where stock text after the
image starts) and ``[OBJ_START]`` ``s + N + 1``, so every position up to ``[BG_END]`` depends on the
background's units only (the prefix stays cacheable, whatever the object keeps or drops).
``[OBJ_END]`` and the text after keep their sequence index (``s + N + 2`` … when no unit is dropped, as
in stock), so ``generate``'s own decode positions (the last + 1) stay right; with dropped units (a
token budget) the text after continues compactly, as token-pruning methods on LLaVA do.
"""

from __future__ import annotations

import torch

from lf_ext.families.base import sequential_positions
from lf_ext.layout import Group, ImageLayout, SeparatorIds, Span, check_spans, find_spans


def layout_positions(input_ids: torch.Tensor, layout: ImageLayout, ids: SeparatorIds,
                     attention_mask: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """(B, L) positions of a batch whose separated items, row after row, are ``layout``'s."""
    positions = sequential_positions(input_ids, attention_mask)
    if not layout.separated:
        return positions  # a plain layout: stock positions (with a budget, the kept tokens' compact ones)
    item = 0
    for row in range(input_ids.shape[0]):
        spans = find_spans(input_ids[row].tolist(), ids)
        row_layout = ImageLayout.concat((layout.item(item + k) for k in range(len(spans))), separated=True)
        check_spans(spans, row_layout)
        for k, span in enumerate(spans):
            if attention_mask is None or bool(attention_mask[row, span.bg_start : span.obj_end + 1].all()):
                _raster(positions[row], span, row_layout, k)  # (padding may hold LF's fake image: left alone)
        item += len(spans)
    if item != len(layout):
        raise ValueError(f"the batch has {item} separated items, the layout {len(layout)}")
    return positions


def _raster(row_positions: torch.Tensor, span: Span, layout: ImageLayout, item: int) -> None:
    """Set one item's visual tokens' and its first two separators' positions in place."""
    start = int(row_positions[span.bg_start]) + 1
    units = layout.sizes[item]
    background = layout.token_units(item, (Group.BACKGROUND,)).to(row_positions.device)
    objects = layout.token_units(item, (Group.OBJECT,)).to(row_positions.device)
    row_positions[span.bg_start + 1 : span.bg_end] = start + background
    row_positions[span.bg_end] = start + units
    row_positions[span.bg_end + 1] = start + units + 1
    row_positions[span.bg_end + 2 : span.obj_end] = start + objects
