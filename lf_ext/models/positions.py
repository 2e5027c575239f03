"""M-RoPE position ids for the separated layout (Qwen2-VL / Qwen2.5-VL).

For one image starting at text position ``s`` with a ``rows x cols`` unit grid, every visual token
keeps the position the stock layout gives its unit, ``(s, s + row, s + col)``, whether it sits in the
background or the object group. ``[BG_END]`` takes ``s + max(rows, cols)``, where stock text after
the image would start, so every position up to ``[BG_END]`` depends on the background units only and
never on the object: the background prefix can be cached. Text positions are 1-D as in stock.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import Callable

import torch

# set by the collator wrapper while LLaMA-Factory computes position ids for a batch
UNIT_LABELS: contextvars.ContextVar[torch.Tensor | None] = contextvars.ContextVar("bgobj_unit_labels", default=None)


@dataclass(frozen=True)
class LayoutTokens:
    """Token ids the position walk needs."""

    bg_start: int
    obj_start: int
    image: int
    video: int
    merge: int


def _image_positions(start: int, labels: torch.Tensor, want_object: bool) -> torch.Tensor:
    """(3, n) positions of one group's units in row-major order."""
    rows, cols = torch.nonzero(labels == want_object, as_tuple=True)
    return torch.stack([torch.full_like(rows, start), start + rows, start + cols])


def _take_run(token_list: list[int], i: int, image_token: int) -> int:
    """End index of the run of image tokens starting at ``i`` (``i`` itself when there is none)."""
    while i < len(token_list) and token_list[i] == image_token:
        i += 1
    return i


def _row_positions(tokens: torch.Tensor, grids: list[list[int]], labels: list[torch.Tensor], ids: LayoutTokens) -> torch.Tensor:
    """Walk one sequence (padding removed) and return its (3, n) positions."""
    token_list = tokens.tolist()
    out, cur, i, image, object_units = [], 0, 0, -1, None
    while i < len(token_list):
        tok = token_list[i]
        if tok == ids.image:
            raise ValueError("visual tokens outside the [BG_START]/[OBJ_START] layout in a bgobj sequence")
        out.append(torch.full((3, 1), cur, dtype=torch.long))
        cur, i = cur + 1, i + 1
        if tok == ids.bg_start:
            image += 1
            rows, cols = grids[image][1] // ids.merge, grids[image][2] // ids.merge
            unit_labels = labels[image].view(rows, cols)
            group, object_units = _image_positions(cur, unit_labels, False), _image_positions(cur, unit_labels, True)
            cur += max(rows, cols)
        elif tok == ids.obj_start and object_units is not None:
            group, object_units = object_units, None
        else:
            continue
        end = _take_run(token_list, i, ids.image)
        if group.shape[1] != end - i:
            raise ValueError(f"image {image}: {end - i} visual tokens where the labels give {group.shape[1]}")
        out.append(group)
        i = end
    return torch.cat(out, dim=1) if out else torch.zeros(3, 0, dtype=torch.long)


def separated_rope_index(stock: Callable, ids: LayoutTokens, input_ids: torch.Tensor, mm_token_type_ids=None,
                         image_grid_thw=None, video_grid_thw=None, attention_mask=None, bgobj_unit_labels=None,
                         **kwargs) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Drop-in ``get_rope_index``: separated rows by the walk above, other rows by the stock function."""
    labels = bgobj_unit_labels if bgobj_unit_labels is not None else UNIT_LABELS.get()
    if labels is None or not bool((input_ids == ids.bg_start).any()):
        return stock(input_ids, mm_token_type_ids=mm_token_type_ids, image_grid_thw=image_grid_thw,
                     video_grid_thw=video_grid_thw, attention_mask=attention_mask, **kwargs)  # fmt: skip
    if video_grid_thw is not None:
        raise ValueError("qwen2_vl_bgobj: a batch mixing videos with separated images is not supported")
    grids = image_grid_thw.tolist()
    sizes = [(t * h * w) // ids.merge**2 for t, h, w in grids]
    per_image = list(torch.split(labels.to("cpu").long(), sizes))
    positions = torch.zeros(3, *input_ids.shape, dtype=input_ids.dtype, device=input_ids.device)
    deltas, image = [], 0
    for row in range(input_ids.shape[0]):
        keep = attention_mask[row].bool() if attention_mask is not None else torch.ones_like(input_ids[row], dtype=torch.bool)
        tokens = input_ids[row][keep].to("cpu")
        count = int((tokens == ids.bg_start).sum())
        row_pos = _row_positions(tokens, grids[image : image + count], per_image[image : image + count], ids)
        image += count
        positions[:, row, keep] = row_pos.to(positions.device, positions.dtype)
        deltas.append(int(row_pos.max()) + 1 - len(tokens) if row_pos.numel() else 0)
    return positions, torch.tensor(deltas, device=input_ids.device).unsqueeze(1)
