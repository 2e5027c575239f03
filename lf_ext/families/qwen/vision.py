"""Separated encoding for the Qwen2-VL / Qwen2.5-VL vision towers.

The units of chosen groups of an :class:`~lf_ext.layout.ImageLayout` go through the tower in one
pass, attention cut into segments so that no two groups (and, as in stock, no two temporal slices or
items) ever attend to each other; every patch keeps its stock 2-D rotary position. Qwen2.5-VL's
window attention is cut by the groups too (window ∩ group), its full-attention blocks by
(item, slice, group). Output rows: per item, the units of each requested group in
``(slice, row, col)`` order, groups in the requested order: the layout's token order.

Patch order in ``pixel_values`` (``Qwen2VLImageProcessor``): per item ``(t, h/m, w/m, m, m)``, so the
``m*m`` patches of a unit are consecutive; unit ``u`` of the flat ``(slice, row, col)`` order owns
patches ``u*m*m .. u*m*m + m*m - 1`` of its item.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate
from typing import Callable, Sequence

import torch
from torch import nn

from lf_ext.layout import TOKEN_GROUPS, Group, ImageLayout

Projector = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (patch rows, is_object per unit) -> tokens


@dataclass(frozen=True, eq=False)
class UnitPlan:
    """Which units the tower processes, in which order, in which attention segments."""

    grid_thw: torch.Tensor  # (items, 3) in patches, as the stock tower takes it
    order: torch.Tensor  # long [n]: processing row -> global unit index
    segment_lengths: tuple[int, ...]  # units per (item, slice, group) segment, processing order
    window_lengths: tuple[int, ...] | None  # units per (item, slice, group, window) segment (Qwen2.5-VL)
    output_index: torch.Tensor | None  # long [n]: token row -> processing row (None: the same order)
    is_object: torch.Tensor  # bool [n], processing order


def cu_seqlens(lengths: Sequence[int], device: torch.device | str | None = None) -> torch.Tensor:
    """Cumulative segment lengths with a leading 0, int32 like the stock towers (FA2 requires int32)."""
    return torch.tensor([0, *accumulate(lengths)], dtype=torch.int32, device=device)


def _runs(keys: torch.Tensor) -> list[int]:
    """Lengths of the runs of equal rows of ``keys`` ([n, k]), in order."""
    if keys.shape[0] == 0:
        return []
    return torch.unique_consecutive(keys, dim=0, return_counts=True)[1].tolist()


def plan_units(layout: ImageLayout, merge: int, groups: Sequence[Group] = TOKEN_GROUPS,
               window_units: int | None = None) -> UnitPlan:  # fmt: skip
    """Processing order and segments for the units of ``groups``.

    Units are sorted per item by (group, slice[, window row, window col], row/col inside the window):
    every segment is contiguous. Without windows the processing order is the token order."""
    orders, keys, token_orders, offset = [], [], [], 0
    for item, (slices, rows, cols) in enumerate(layout.grids):
        flat = layout.item_groups(item).reshape(-1).long()
        unit = torch.arange(flat.numel())
        slice_, row, col = unit // (rows * cols), unit // cols % rows, unit % cols
        rank = torch.full_like(flat, -1)
        for index, group in enumerate(groups):
            rank[flat == int(group)] = index
        chosen = rank >= 0
        if window_units:
            ws = window_units
            window = (row // ws) * -(-cols // ws) + col // ws
            inner, inner_size = (row % ws) * ws + col % ws, ws * ws
        else:
            window, inner, inner_size = torch.zeros_like(unit), row * cols + col, rows * cols
        key = torch.stack([torch.full_like(unit, item), rank, slice_, window, inner], dim=1)[chosen]
        windows = int(window.max()) + 1
        sort = torch.argsort(((key[:, 1] * slices + key[:, 2]) * windows + key[:, 3]) * inner_size + key[:, 4])
        orders.append(unit[chosen][sort] + offset)
        keys.append(key[sort])
        token = torch.cat([unit[flat == int(group)] for group in groups]) if groups else unit[:0]
        token_orders.append(token + offset)
        offset += flat.numel()
    order, key = torch.cat(orders), torch.cat(keys)
    token_order = torch.cat(token_orders)
    output_index = None
    if window_units:
        position = torch.full((max(offset, 1),), -1, dtype=torch.long)
        position[order] = torch.arange(order.numel())
        output_index = position[token_order]
    grid_thw = torch.tensor([[t, r * merge, c * merge] for t, r, c in layout.grids], dtype=torch.long)
    return UnitPlan(
        grid_thw=grid_thw, order=order, segment_lengths=tuple(_runs(key[:, :3])),
        window_lengths=tuple(_runs(key[:, :4])) if window_units else None, output_index=output_index,
        is_object=layout.groups.long()[order] == int(Group.OBJECT),
    )  # fmt: skip


def expand_units(unit_index: torch.Tensor, unit_size: int) -> torch.Tensor:
    """Unit indices -> indices of their patches, each unit's patches kept together in original order."""
    return (unit_index[:, None] * unit_size + torch.arange(unit_size, device=unit_index.device)).reshape(-1)


def window_units_of(visual: nn.Module) -> int:
    """Window side in units, as ``get_window_index`` computes it (``vit_merger_window_size``)."""
    size = visual.window_size // visual.spatial_merge_size // visual.patch_size
    if size < 1:
        raise ValueError(f"window_size={visual.window_size} is smaller than one unit")
    return size


def block_cu_seqlens(visual: nn.Module, plan: UnitPlan, device) -> list[torch.Tensor]:
    """``cu_seqlens`` per block (in patches): (item, slice, group) segments, or (item, slice, group,
    window) segments for the Qwen2.5-VL blocks that attend within windows."""
    unit_size = visual.spatial_merge_size**2
    group_cu = cu_seqlens([n * unit_size for n in plan.segment_lengths], device)
    if plan.window_lengths is None:
        return [group_cu] * len(visual.blocks)
    window_cu, full = cu_seqlens([n * unit_size for n in plan.window_lengths], device), set(visual.fullatt_block_indexes)
    return [group_cu if i in full else window_cu for i in range(len(visual.blocks))]


def run_tower(visual: nn.Module, pixel_values: torch.Tensor, plan: UnitPlan, projector: Projector | None = None) -> torch.Tensor:
    """The stock tower pipeline over ``plan.order``'s units, one ``cu_seqlens`` per block.

    ``projector(hidden, is_object)`` replaces ``visual.merger`` when given (split projectors)."""
    device = pixel_values.device
    patch_index = expand_units(plan.order, visual.spatial_merge_size**2).to(device)
    if patch_index.numel() == pixel_values.shape[0]:
        hidden_states = visual.patch_embed(pixel_values)[patch_index]
    else:  # a subset of the units: embed only their patches (the embedding is per patch)
        hidden_states = visual.patch_embed(pixel_values[patch_index])
    rotary_pos_emb = visual.rot_pos_emb(plan.grid_thw).to(device)[patch_index]
    emb = torch.cat((rotary_pos_emb, rotary_pos_emb), dim=-1)
    position_embeddings = (emb.cos(), emb.sin())
    for blk, cu in zip(visual.blocks, block_cu_seqlens(visual, plan, device), strict=True):
        hidden_states = blk(hidden_states, cu_seqlens=cu, position_embeddings=position_embeddings)
    merged = visual.merger(hidden_states) if projector is None else projector(hidden_states, plan.is_object.to(device))
    return merged if plan.output_index is None else merged[plan.output_index.to(merged.device)]


def encode_units(visual: nn.Module, pixel_values: torch.Tensor, layout: ImageLayout, groups: Sequence[Group] = TOKEN_GROUPS,
                 projector: Projector | None = None) -> torch.Tensor:  # fmt: skip
    """Visual tokens of the units of ``groups`` in token order: ``[tokens, out_hidden]``.

    Works for ``Qwen2VisionTransformerPretrainedModel`` and ``Qwen2_5_VisionTransformerPretrainedModel``
    (detected by ``get_window_index``). With ``groups=(OBJECT,)`` it is what a cache hit needs: the
    object rows of the full encoding (the groups never interact), without computing the background.
    """
    merge = visual.spatial_merge_size
    n_patches = sum(layout.sizes) * merge**2
    if pixel_values.shape[0] != n_patches:
        raise ValueError(f"pixel_values has {pixel_values.shape[0]} rows, the layout's grids imply {n_patches}")
    windows = window_units_of(visual) if hasattr(visual, "get_window_index") else None
    plan = plan_units(layout, merge, groups, windows)
    if plan.order.numel() == 0:
        return pixel_values.new_zeros(0, visual.merger.mlp[-1].out_features, dtype=visual.dtype)
    return run_tower(visual, pixel_values.type(visual.dtype), plan, projector)
