"""M-RoPE position ids of layout sequences (Qwen2-VL / Qwen2.5-VL).

For an item whose ``[BG_START]`` sits at text position ``s - 1``, every visual token keeps the
position its unit has in the stock layout, ``(s + slice * step, s + row, s + col)`` (``step``: 1 for
images and Qwen2-VL videos, ``tokens_per_second * slice seconds`` for Qwen2.5-VL videos; a video's
background tokens come from its first slice, so they sit at ``t = s``), whether it is in the background or the object group. ``[BG_END]`` takes
``s + max(rows, cols)``, where stock text after the item would start (transformers' ``get_rope_index``),
so every position up to ``[BG_END]`` depends on the background units only, never on the object: the
background prefix can be cached. Text positions are 1-D as in stock.
A plain layout (the stock template under a token budget, or with video options) is the stock walk
with its kept units only: each at its stock position, the text after the item where stock text would
start (``s + max(rows, cols)``, for clips too, as transformers' ``get_rope_index``); a pooled item walks
its pooled grid, as a clip of that grid would.
"""

from __future__ import annotations

from typing import Callable

import torch

from lf_ext.layout import COLLATING_LAYOUT, LAYOUT_KEY, Group, ImageLayout, SeparatorIds, check_spans, find_spans


def time_step(layout: ImageLayout, item: int, tokens_per_second: int | None) -> int:
    """The temporal position step between an item's slices (transformers' ``time_interval``)."""
    if tokens_per_second is None or not layout.is_video(item):
        return 1
    return tokens_per_second * layout.slice_seconds[item]


def _unit_positions(start: int, layout: ImageLayout, item: int, group: Group, tokens_per_second: int | None) -> torch.Tensor:
    """(3, n) positions of one group's tokens of one item."""
    _, rows, cols = layout.grids[item]
    units = layout.token_units(item, (group,))
    step = time_step(layout, item, tokens_per_second)
    return torch.stack([start + units // (rows * cols) * step, start + units // cols % rows, start + units % cols])


def _sequence_positions(tokens: list[int], layout: ImageLayout, ids: SeparatorIds, tokens_per_second: int | None) -> torch.Tensor:
    """(3, n) positions of one sequence (padding removed) whose items are ``layout``'s."""
    spans = find_spans(tokens, ids)
    check_spans(spans, layout)
    out, cur, at = [], 0, 0
    for item, span in enumerate(spans):
        text = span.bg_start + 1 - at  # text before the item, and [BG_START]
        out.append(torch.arange(cur, cur + text).expand(3, -1))
        cur += text
        start = cur
        out.append(_unit_positions(start, layout, item, Group.BACKGROUND, tokens_per_second))
        cur = start + max(layout.grids[item][1:])
        out.append(torch.arange(cur, cur + 2).expand(3, -1))  # [BG_END] [OBJ_START]
        out.append(_unit_positions(start, layout, item, Group.OBJECT, tokens_per_second))
        cur += 2
        at = span.obj_end
    out.append(torch.arange(cur, cur + len(tokens) - at).expand(3, -1))
    return torch.cat(out, dim=1).long()


def _plain_positions(tokens: list[int], layout: ImageLayout, image: int, tokens_per_second: int | None) -> torch.Tensor:
    """(3, n) positions of one sequence whose runs of visual tokens are ``layout``'s plain items."""
    runs = _runs(tokens, image)
    if len(runs) != len(layout):
        raise ValueError(f"{len(runs)} images in the tokens, {len(layout)} in the layout")
    out, cur, at = [], 0, 0
    for item, (start, length) in enumerate(runs):
        if length != layout.n_tokens(item):
            raise ValueError(f"item {item}: {length} visual tokens in the sequence, the layout keeps {layout.n_tokens(item)}")
        out.append(torch.arange(cur, cur + start - at).expand(3, -1))
        cur += start - at
        out.append(_plain_item_positions(cur, layout, item, tokens_per_second))
        cur, at = cur + max(layout.token_grid(item)[1:]), start + length
    out.append(torch.arange(cur, cur + len(tokens) - at).expand(3, -1))
    return torch.cat(out, dim=1).long()


def _plain_item_positions(start: int, layout: ImageLayout, item: int, tokens_per_second: int | None) -> torch.Tensor:
    """(3, n) positions of a plain item's tokens: its kept units, or every cell of its pooled grid."""
    if not layout.resampled(item):
        return _unit_positions(start, layout, item, Group.BACKGROUND, tokens_per_second)
    slices, rows, cols = layout.token_grid(item)
    cells = torch.arange(slices * rows * cols)
    step = time_step(layout, item, tokens_per_second)
    return torch.stack([start + cells // (rows * cols) * step, start + cells // cols % rows, start + cells % cols])


def _runs(tokens: list[int], image: int) -> list[tuple[int, int]]:
    """(start, length) of each run of ``image`` tokens."""
    runs, i = [], 0
    while i < len(tokens):
        if tokens[i] == image:
            j = i
            while j < len(tokens) and tokens[j] == image:
                j += 1
            runs.append((i, j - i))
            i = j
        else:
            i += 1
    return runs


def layout_positions(input_ids: torch.Tensor, layout: ImageLayout, ids: SeparatorIds,
                     attention_mask: torch.Tensor | None = None, tokens_per_second: int | None = None,
                     ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(positions (3, B, L), rope deltas (B, 1)) of a batch whose items, row after row, are ``layout``'s;
    ``tokens_per_second``: Qwen2.5-VL's (None: Qwen2-VL, a step of 1)."""
    positions = torch.zeros(3, *input_ids.shape, dtype=input_ids.dtype, device=input_ids.device)
    deltas, item = [], 0
    for row in range(input_ids.shape[0]):
        keep = attention_mask[row].bool() if attention_mask is not None else torch.ones_like(input_ids[row], dtype=torch.bool)
        row_ids = input_ids[row].tolist()
        starts = ([at for at, t in enumerate(row_ids) if t == ids.bg_start] if layout.separated
                  else [start for start, _ in _runs(row_ids, ids.image)])  # fmt: skip
        kept = [item + k for k, at in enumerate(starts) if bool(keep[at])]  # padding may hold LF's fake image
        item += len(starts)
        row_layout = ImageLayout.concat((layout.item(k) for k in kept), layout.separated)
        tokens = input_ids[row][keep].tolist()
        if layout.separated:
            row_positions = _sequence_positions(tokens, row_layout, ids, tokens_per_second)
        else:
            row_positions = _plain_positions(tokens, row_layout, ids.image, tokens_per_second)
        positions[:, row, keep] = row_positions.to(positions.device, positions.dtype)
        deltas.append(int(row_positions.max()) + 1 - len(tokens) if row_positions.numel() else 0)
    if item != len(layout):
        raise ValueError(f"the batch has {item} separated items, the layout {len(layout)}")
    return positions, torch.tensor(deltas, device=input_ids.device).unsqueeze(1)


def separated_rope_index(stock: Callable, ids: SeparatorIds, tokens_per_second: int | None, input_ids: torch.Tensor,
                         mm_token_type_ids=None,
                         image_grid_thw=None, video_grid_thw=None, attention_mask=None, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Drop-in ``get_rope_index``: layout sequences by the walks above, others by the stock function.

    The layout comes as the ``bgobj_layout`` keyword (``generate`` passes every model input) or, in
    the training collator, from :data:`~lf_ext.layout.COLLATING_LAYOUT`."""
    layout = ImageLayout.coerce(kwargs.pop(LAYOUT_KEY, None)) or COLLATING_LAYOUT.get()
    if layout is None or len(layout) == 0 or (layout.separated and not bool((input_ids == ids.bg_start).any())):
        return stock(input_ids, mm_token_type_ids=mm_token_type_ids, image_grid_thw=image_grid_thw,
                     video_grid_thw=video_grid_thw, attention_mask=attention_mask, **kwargs)  # fmt: skip
    if video_grid_thw is not None:
        raise ValueError("a batch mixing videos with laid-out images is not supported")
    return layout_positions(input_ids, layout, ids, attention_mask, tokens_per_second)


def prefusion_positions(position_ids, hidden: torch.Tensor, past_length: int):
    """(M-RoPE positions (3, B, n), 1-D text positions or None) from what the Qwen LLM received."""
    if position_ids is None:
        position_ids = torch.arange(hidden.shape[1], device=hidden.device) + past_length
        position_ids = position_ids.view(1, 1, -1).expand(3, hidden.shape[0], -1)
    elif position_ids.ndim == 2:
        position_ids = position_ids[None].expand(3, *position_ids.shape)
    text_positions = None
    if position_ids.shape[0] == 4:
        text_positions, position_ids = position_ids[0], position_ids[1:]
    return position_ids, text_positions
