"""1-D position ids of separated LLaVA sequences: every visual token at its unit's stock (raster) position.

Stock LLaVA-1.5 gives an image's 576 tokens the positions ``s … s + 575`` in raster order (``s``: the
first one's). In the separated order a unit's place in the sequence depends on the mask, so sequential
positions would tell the LLM a different neighbourhood for every mask. Here, for an item whose
``[BG_START]`` sits at ``s - 1``, unit ``u`` (flat raster index) takes ``s + u`` whether it is in the
background or the object group; ``[BG_END]`` takes ``s + N`` (``N`` units: where stock text after the
image starts), ``[OBJ_START]`` ``s + N + 1`` and ``[OBJ_END]`` ``s + N + 2``. Everything up to
``[BG_END]`` depends on the background units only (the prefix stays cacheable), and the text after the
item continues at its sequence index, as in stock, so ``generate``'s decode positions (the last + 1)
stay right.

An item with dropped units (a token budget) keeps sequential positions: with 1-D positions the text
after it could not both follow the stock raster walk and its sequence index, and compact positions
are what token-pruning methods on LLaVA use.
"""

from __future__ import annotations

import torch

from lf_ext.layout import Group, ImageLayout, SeparatorIds, Span, check_spans, find_spans


def sequential_positions(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """``generate``'s own 1-D positions: the count of attended tokens before each (0 at padding)."""
    if attention_mask is None:
        return torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0).expand(input_ids.shape[0], -1).clone()
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0).masked_fill(attention_mask == 0, 0)


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
            attended = attention_mask is None or bool(attention_mask[row, span.bg_start : span.obj_end + 1].all())
            if attended and bool(row_layout.kept(k).all()):  # padding may hold LF's fake image
                _raster(positions[row], span, row_layout, k)
        item += len(spans)
    if item != len(layout):
        raise ValueError(f"the batch has {item} separated items, the layout {len(layout)}")
    return positions


def _raster(row_positions: torch.Tensor, span: Span, layout: ImageLayout, item: int) -> None:
    """Set one item's visual and separator positions in place."""
    start = int(row_positions[span.bg_start]) + 1
    units = layout.sizes[item]
    background = layout.token_units(item, (Group.BACKGROUND,)).to(row_positions.device)
    objects = layout.token_units(item, (Group.OBJECT,)).to(row_positions.device)
    row_positions[span.bg_start + 1 : span.bg_end] = start + background
    row_positions[span.bg_end] = start + units
    row_positions[span.bg_end + 1] = start + units + 1
    row_positions[span.bg_end + 2 : span.obj_end] = start + objects
    row_positions[span.obj_end] = start + units + 2
