"""Background/object-separated forward of the Qwen2-VL / Qwen2.5-VL vision towers.

Each image is split into token units (one merged visual token = a ``merge_size x merge_size`` block of
patches) labelled background (0) or object (1). Both groups are encoded in the same pass but can never
attend to each other, and every patch keeps its original 2-D rotary position, so background outputs do
not depend on object pixels. Qwen2.5-VL window attention is restricted to ``window ∩ group`` and its
full-attention blocks to ``(image, group)``. Output rows per image: background units row-major, then
object units row-major.

Patch order in ``pixel_values`` (see ``Qwen2VLImageProcessor``): per image ``(t, h/m, w/m, m, m)``, so the
``m*m`` patches of a unit are consecutive and units are row-major; unit ``u`` owns patches
``u*m*m .. u*m*m + m*m - 1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate
from typing import Callable

import torch
from torch import nn


@dataclass(frozen=True, eq=False)
class GroupLayout:
    """Per-image split of units into (background, object); indices are global over the batch."""

    grids: tuple[tuple[int, int, int], ...]  # (t, h, w) in patches, per image
    merge_size: int
    labels: torch.Tensor  # bool [Σunits], True = object, on CPU
    unit_perm: torch.Tensor  # long [Σunits]: output row -> original unit (bg row-major, then obj, per image)
    patch_perm: torch.Tensor  # long [Σpatches]: the same order expanded to patches
    seg_lengths: tuple[int, ...]  # non-empty (image, group) segments in patches, in unit_perm order
    n_background: tuple[int, ...]
    n_object: tuple[int, ...]

    @property
    def units_per_image(self) -> list[int]:
        """Number of units of each image."""
        return [n_bg + n_obj for n_bg, n_obj in zip(self.n_background, self.n_object)]


@dataclass(frozen=True, eq=False)
class WindowLayout:
    """Qwen2.5-VL processing order: units grouped by (image, group, window), stock order inside a window."""

    unit_order: torch.Tensor  # long [Σunits]: processing row -> original unit
    window_seg_lengths: tuple[int, ...]  # non-empty (image, group, window) segments in patches
    group_seg_lengths: tuple[int, ...]  # non-empty (image, group) segments in patches (full-attention blocks)
    output_index: torch.Tensor  # long [Σunits]: merger row to take for each output row


def _validate(
    grid_thw: torch.Tensor, unit_labels: torch.Tensor, merge_size: int
) -> tuple[list[tuple[int, int, int]], torch.Tensor]:
    """Check the grids and labels; return the grids as ints and the labels as a flat CPU bool tensor."""
    grids = [tuple(int(v) for v in row) for row in grid_thw.tolist()]
    for t, h, w in grids:
        if t != 1:
            raise ValueError(f"separated vision encoding is for images only (got t={t}); videos keep the stock path")
        if h % merge_size or w % merge_size:
            raise ValueError(f"grid {h}x{w} is not divisible by merge_size={merge_size}")
    labels = unit_labels.detach().reshape(-1).cpu()
    expected = sum(h * w for _, h, w in grids) // merge_size**2
    if labels.numel() != expected:
        raise ValueError(f"unit_labels has {labels.numel()} entries, expected Σ h*w/merge² = {expected}")
    if labels.dtype != torch.bool:
        if labels.is_floating_point() or not bool(((labels == 0) | (labels == 1)).all()):
            raise ValueError("unit_labels must be bool or integers in {0, 1} (0 = background, 1 = object)")
        labels = labels != 0
    return grids, labels


def _sort_units(seg_key: torch.Tensor, inner_key: torch.Tensor, inner_size: int) -> tuple[torch.Tensor, list[int]]:
    """Order units by (seg_key, inner_key); return the order and the unit count of each non-empty segment."""
    order = torch.argsort(seg_key * inner_size + inner_key)
    counts = torch.unique_consecutive(seg_key[order], return_counts=True)[1]
    return order, counts.tolist()


def _expand_units(unit_index: torch.Tensor, unit_size: int) -> torch.Tensor:
    """Unit indices -> indices of their patches, each unit's patches kept together in original order."""
    return (unit_index[:, None] * unit_size + torch.arange(unit_size, device=unit_index.device)).reshape(-1)


def cu_seqlens(lengths: tuple[int, ...] | list[int], device: torch.device | str | None = None) -> torch.Tensor:
    """Cumulative segment lengths with a leading 0, int32 like the stock towers (FA2 requires int32)."""
    return torch.tensor([0, *accumulate(lengths)], dtype=torch.int32, device=device)


def group_layout(grid_thw: torch.Tensor, unit_labels: torch.Tensor, merge_size: int) -> GroupLayout:
    """Per image: background units (row-major) first, then object units; zero-length groups are dropped."""
    grids, labels = _validate(grid_thw, unit_labels, merge_size)
    orders, lengths, n_bg, n_obj, offset = [], [], [], [], 0
    for (_, h, w), lab in zip(grids, labels.split([h * w // merge_size**2 for _, h, w in grids])):
        n = lab.numel()
        order, counts = _sort_units(lab.long(), torch.arange(n), n)
        orders.append(order + offset)
        lengths += [c * merge_size**2 for c in counts]
        n_obj.append(int(lab.sum()))
        n_bg.append(n - n_obj[-1])
        offset += n
    unit_perm = torch.cat(orders)
    return GroupLayout(
        grids=tuple(grids),
        merge_size=merge_size,
        labels=labels,
        unit_perm=unit_perm,
        patch_perm=_expand_units(unit_perm, merge_size**2),
        seg_lengths=tuple(lengths),
        n_background=tuple(n_bg),
        n_object=tuple(n_obj),
    )


def window_units_of(visual: nn.Module) -> int:
    """Window side in units, as ``get_window_index`` computes it (``vit_merger_window_size``)."""
    size = visual.window_size // visual.spatial_merge_size // visual.patch_size
    if size < 1:
        raise ValueError(f"window_size={visual.window_size} is smaller than one unit")
    return size


def window_segments(layout: GroupLayout, window_units: int) -> WindowLayout:
    """Qwen2.5-VL windows (anchored top-left like ``get_window_index``) intersected with the groups.

    Per image the units are ordered by (group, window row, window col, row/col inside the window), so
    every (group, window) segment is contiguous and so is every (image, group) segment.
    """
    m, ws = layout.merge_size, window_units
    orders, lengths, offset = [], [], 0
    for (_, h, w), lab in zip(layout.grids, layout.labels.split(layout.units_per_image)):
        uh, uw = h // m, w // m
        rows = torch.arange(uh).repeat_interleave(uw)
        cols = torch.arange(uw).repeat(uh)
        n_win_h, n_win_w = -(-uh // ws), -(-uw // ws)
        seg = (lab.long() * n_win_h + rows // ws) * n_win_w + cols // ws
        order, counts = _sort_units(seg, (rows % ws) * ws + cols % ws, ws * ws)
        orders.append(order + offset)
        lengths += [c * m * m for c in counts]
        offset += uh * uw
    unit_order = torch.cat(orders)
    return WindowLayout(
        unit_order=unit_order,
        window_seg_lengths=tuple(lengths),
        group_seg_lengths=layout.seg_lengths,
        output_index=torch.argsort(unit_order)[layout.unit_perm],
    )


def _run_tower(
    visual: nn.Module,
    pixel_values: torch.Tensor,
    grid_thw: torch.Tensor,
    unit_order: torch.Tensor,
    block_cu_seqlens: list[torch.Tensor],
    output_index: torch.Tensor | None,
    merge: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Stock tower pipeline with the patches in ``unit_order`` and one ``cu_seqlens`` per block.

    ``merge(hidden_states, is_object_unit)`` replaces ``visual.merger`` when given (split projectors);
    ``is_object_unit`` is in processing order.
    """
    device = pixel_values.device
    patch_index = _expand_units(unit_order, visual.spatial_merge_size**2).to(device)
    if patch_index.numel() == pixel_values.shape[0]:
        hidden_states = visual.patch_embed(pixel_values)[patch_index]
    else:  # a subset of the units: embed only their patches (the embedding is per patch)
        hidden_states = visual.patch_embed(pixel_values[patch_index])
    rotary_pos_emb = visual.rot_pos_emb(grid_thw).to(device)[patch_index]
    emb = torch.cat((rotary_pos_emb, rotary_pos_emb), dim=-1)
    position_embeddings = (emb.cos(), emb.sin())
    for blk, cu in zip(visual.blocks, block_cu_seqlens, strict=True):
        hidden_states = blk(hidden_states, cu_seqlens=cu, position_embeddings=position_embeddings)
    if merge is None:
        merged = visual.merger(hidden_states)
    else:
        merged = merge(hidden_states, labels[unit_order].to(device))
    return merged if output_index is None else merged[output_index.to(merged.device)]


def separated_vision_forward(
    visual: nn.Module,
    pixel_values: torch.Tensor,
    grid_thw: torch.Tensor,
    unit_labels: torch.Tensor,
    merge: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Encode background and object units as two non-interacting groups; returns ``[Σunits, out_hidden]``.

    Works for ``Qwen2VisionTransformerPretrainedModel`` and ``Qwen2_5_VisionTransformerPretrainedModel``
    (detected by ``get_window_index``). Rows per image: background units row-major, then object units.
    """
    layout = group_layout(grid_thw, unit_labels, visual.spatial_merge_size)
    n_patches = sum(t * h * w for t, h, w in layout.grids)
    if pixel_values.shape[0] != n_patches:
        raise ValueError(f"pixel_values has {pixel_values.shape[0]} rows, grid_thw implies {n_patches}")
    device = pixel_values.device
    if not hasattr(visual, "get_window_index"):
        block_cu = _block_cu(visual, layout.seg_lengths, None, device)
        return _run_tower(visual, pixel_values, grid_thw, layout.unit_perm, block_cu, None, merge, layout.labels)
    windows = window_segments(layout, window_units_of(visual))
    block_cu = _block_cu(visual, layout.seg_lengths, windows.window_seg_lengths, device)
    return _run_tower(visual, pixel_values, grid_thw, windows.unit_order, block_cu, windows.output_index, merge, layout.labels)


def _block_cu(visual: nn.Module, group_lengths, window_lengths, device) -> list[torch.Tensor]:
    """``cu_seqlens`` per block: (image, group) segments, or (image, group, window) segments for the
    Qwen2.5-VL blocks that attend within windows."""
    group_cu = cu_seqlens(group_lengths, device)
    if window_lengths is None:
        return [group_cu] * len(visual.blocks)
    window_cu, full = cu_seqlens(window_lengths, device), set(visual.fullatt_block_indexes)
    return [group_cu if i in full else window_cu for i in range(len(visual.blocks))]


def _keep_units(order: torch.Tensor, seg_lengths: tuple[int, ...], keep: torch.Tensor, unit_size: int
                ) -> tuple[torch.Tensor, tuple[int, ...]]:  # fmt: skip
    """Drop the units with ``keep`` False from a processing order and its segments (in patches)."""
    seg_of = torch.repeat_interleave(torch.arange(len(seg_lengths)), torch.tensor(seg_lengths) // unit_size)
    kept = keep[order]
    counts = torch.bincount(seg_of[kept], minlength=len(seg_lengths)).tolist()
    return order[kept], tuple(c * unit_size for c in counts if c)


def encode_object_units(
    visual: nn.Module,
    pixel_values: torch.Tensor,
    grid_thw: torch.Tensor,
    unit_labels: torch.Tensor,
    merge: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """The object rows of :func:`separated_vision_forward` without computing the background group.

    A background-cache hit needs only these: the background rows come from the cache. Returns
    ``[Σ object units, out_hidden]``, per image row-major, equal to the object part of the full
    forward (the groups never interact) up to floating-point summation order.
    """
    layout = group_layout(grid_thw, unit_labels, visual.spatial_merge_size)
    device, unit_size = pixel_values.device, visual.spatial_merge_size**2
    if pixel_values.shape[0] != sum(t * h * w for t, h, w in layout.grids):
        raise ValueError(f"pixel_values has {pixel_values.shape[0]} rows, grid_thw does not match")
    object_perm = layout.unit_perm[layout.labels[layout.unit_perm]]
    if object_perm.numel() == 0:
        return pixel_values.new_zeros(0, visual.merger.mlp[-1].out_features)
    if not hasattr(visual, "get_window_index"):
        order, groups = _keep_units(layout.unit_perm, layout.seg_lengths, layout.labels, unit_size)
        return _run_tower(visual, pixel_values, grid_thw, order, _block_cu(visual, groups, None, device), None, merge,
                          layout.labels)  # fmt: skip
    windows = window_segments(layout, window_units_of(visual))
    order, window_lengths = _keep_units(windows.unit_order, windows.window_seg_lengths, layout.labels, unit_size)
    _, group_lengths = _keep_units(windows.unit_order, windows.group_seg_lengths, layout.labels, unit_size)
    block_cu = _block_cu(visual, group_lengths, window_lengths, device)
    position = torch.empty(layout.labels.numel(), dtype=torch.long)
    position[order] = torch.arange(order.numel())
    return _run_tower(visual, pixel_values, grid_thw, order, block_cu, position[object_perm], merge, layout.labels)


__all__ = [
    "encode_object_units",
    "GroupLayout",
    "WindowLayout",
    "cu_seqlens",
    "group_layout",
    "separated_vision_forward",
    "window_segments",
    "window_units_of",
]
