"""Background/object-separated encoding of tiny random Qwen2-VL / Qwen2.5-VL towers (CPU, fp32)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lf_ext.families.qwen.vision import cu_seqlens, encode_units, expand_units, plan_units, window_units_of
from lf_ext.layout import TOKEN_GROUPS, Group, ImageLayout

ARCHS = ("qwen2_vl", "qwen2_5_vl")
PATCH_DIM = 3 * 2 * 14 * 14
MERGE = 2
TEXT = {
    "hidden_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 64,
    "vocab_size": 128,
    "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
}


def _build_tower(arch: str) -> nn.Module:
    """A tiny random vision tower in eval mode with peaky attention; 2.5-VL windows are 112 px = 2x2 units."""
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
    )

    torch.manual_seed(0)
    if arch == "qwen2_vl":
        vision = {"depth": 2, "embed_dim": 32, "hidden_size": 64, "num_heads": 4, "mlp_ratio": 2}
        model = Qwen2VLForConditionalGeneration(Qwen2VLConfig(vision_config=vision, text_config=TEXT))
    else:
        vision = {
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 4,
            "out_hidden_size": 64,
            "window_size": 112,
            "fullatt_block_indexes": [1],
        }
        model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(vision_config=vision, text_config=TEXT))
    visual = model.model.visual.float().eval()
    for module in visual.modules():  # the default std=0.02 makes attention ~uniform and blind to positions
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=module.in_features**-0.5)
    return visual


@pytest.fixture(scope="module")
def towers() -> dict[str, nn.Module]:
    return {arch: _build_tower(arch) for arch in ARCHS}


def _inputs(grids: list[tuple[int, int]], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random pixel_values and grid_thw for images of (h, w) patches."""
    gen = torch.Generator().manual_seed(seed)
    grid_thw = torch.tensor([[1, h, w] for h, w in grids])
    return torch.randn(sum(h * w for h, w in grids), PATCH_DIM, generator=gen), grid_thw


def _units(grid_thw: torch.Tensor) -> list[int]:
    return [h * w // MERGE**2 for _, h, w in grid_thw.tolist()]


def _mixed_labels(grid_thw: torch.Tensor, seed: int = 1) -> torch.Tensor:
    """Random 0/1 unit labels with both groups non-empty in every image."""
    gen = torch.Generator().manual_seed(seed)
    parts = []
    for n in _units(grid_thw):
        lab = (torch.rand(n, generator=gen) < 0.4).long()
        lab[0], lab[-1] = 0, 1
        parts.append(lab)
    return torch.cat(parts)


def _expected_order(labels: torch.Tensor, units: list[int]) -> torch.Tensor:
    """Reference output order: per image, background units row-major, then object units row-major."""
    out, offset = [], 0
    for lab in labels.split(units):
        out.append(torch.argsort(lab.long(), stable=True) + offset)
        offset += lab.numel()
    return torch.cat(out)


def _row_groups(labels: torch.Tensor, units: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean masks over output rows: (background rows, object rows)."""
    is_obj = labels.bool()[_expected_order(labels, units)]
    return ~is_obj, is_obj


def _patch_mask(labels: torch.Tensor) -> torch.Tensor:
    """Unit labels -> per-patch object mask in pixel_values order (a unit's patches are consecutive)."""
    return labels.bool().repeat_interleave(MERGE**2)


def _stock(visual: nn.Module, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
    return visual(pixel_values, grid_thw).pooler_output


def _layout(grid_thw: torch.Tensor, labels: torch.Tensor) -> ImageLayout:
    return ImageLayout.from_labels([(t, h // MERGE, w // MERGE) for t, h, w in grid_thw.tolist()], labels)


def separated_vision_forward(visual, pixel_values, grid_thw, labels, groups=TOKEN_GROUPS):
    """Encode ``labels``' groups of the images of ``grid_thw`` (the family's separated encoding)."""
    return encode_units(visual, pixel_values, _layout(grid_thw, labels), groups)


# ----------------------------------------------------------------------------------------------- layouts


def test_plan_small_example():
    grid_thw = torch.tensor([[1, 4, 4], [1, 2, 4]])
    plan = plan_units(_layout(grid_thw, torch.tensor([0, 1, 1, 0, 1, 1])), MERGE)
    assert plan.order.tolist() == [0, 3, 1, 2, 4, 5]
    patches = expand_units(plan.order, MERGE**2)
    assert patches[:16].tolist() == [0, 1, 2, 3, 12, 13, 14, 15, 4, 5, 6, 7, 8, 9, 10, 11]
    assert patches[16:].tolist() == list(range(16, 24))
    assert plan.segment_lengths == (2, 2, 2)  # the fully-object image has no zero-length background segment
    assert plan.output_index is None and plan.is_object.tolist() == [False, False, True, True, True, True]
    layout = _layout(grid_thw, torch.tensor([0, 1, 1, 0, 1, 1]))
    assert [(layout.n_background(i), layout.n_object(i)) for i in range(2)] == [(2, 2), (0, 2)]
    assert cu_seqlens([n * 4 for n in plan.segment_lengths]).tolist() == [0, 8, 16, 24]
    assert cu_seqlens(plan.segment_lengths).dtype == torch.int32


def test_plan_slices_and_dropped_units():
    """Two temporal slices: segments per (item, group, slice), dropped units neither processed nor output."""
    groups = torch.tensor([0, 1, 2, 0,   0, 0, 1, 2], dtype=torch.int8)  # noqa: E241  slice 0, slice 1 (2x2 units)
    layout = ImageLayout(((2, 2, 2),), groups)
    plan = plan_units(layout, MERGE)
    assert plan.order.tolist() == [0, 3, 4, 5, 1, 6]  # background (slice 0, slice 1), then object
    assert plan.segment_lengths == (2, 2, 1, 1)
    assert layout.token_units(0).tolist() == plan.order.tolist()
    only_object = plan_units(layout, MERGE, (Group.OBJECT,))
    assert only_object.order.tolist() == [1, 6] and only_object.segment_lengths == (1, 1)


def test_all_background_windows_match_get_window_index(towers):
    visual = towers["qwen2_5_vl"]
    _, grid_thw = _inputs([(8, 12), (10, 6), (4, 4)])
    plan = plan_units(_layout(grid_thw, torch.zeros(sum(_units(grid_thw)), dtype=torch.long)), MERGE, window_units=window_units_of(visual))
    stock_index, stock_cu = visual.get_window_index(grid_thw)
    assert torch.equal(plan.order, stock_index)
    assert cu_seqlens([n * 4 for n in plan.window_lengths]).tolist() == torch.tensor(stock_cu).unique_consecutive().tolist()
    assert torch.equal(plan.output_index, torch.argsort(stock_index))


def test_mixed_windows_are_contiguous_group_window_segments():
    grid_thw = torch.tensor([[1, 8, 12], [1, 10, 6]])
    labels = _mixed_labels(grid_thw)
    layout = _layout(grid_thw, labels)
    plan = plan_units(layout, MERGE, window_units=2)
    assert all(n > 0 for n in plan.window_lengths + plan.segment_lengths)
    assert sum(plan.window_lengths) == sum(plan.segment_lengths) == (8 * 12 + 10 * 6) // 4
    keys = []  # (image, group, window row, window col) of each unit, in processing order
    for img, (_, h, w) in enumerate(grid_thw.tolist()):
        for u in range(h * w // 4):
            keys.append((img, int(labels[sum(_units(grid_thw)[:img]) + u]), u // (w // 2) // 2, u % (w // 2) // 2))
    seq = [keys[u] for u in plan.order.tolist()]
    runs = [i for i in range(len(seq)) if i == 0 or seq[i] != seq[i - 1]]
    assert len(runs) == len(set(seq)) == len(plan.window_lengths)  # each segment appears once
    assert list(plan.window_lengths) == [b - a for a, b in zip(runs, runs[1:] + [len(seq)])]
    assert torch.equal(plan.order[plan.output_index], _expected_order(labels, _units(grid_thw)))


# --------------------------------------------------------------------------------------- stock equivalence


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("label", [0, 1])
@torch.no_grad()
def test_single_group_matches_stock(towers, arch, label):
    visual = towers[arch]
    pixel_values, grid_thw = _inputs([(8, 12), (10, 6)])
    labels = torch.full((sum(_units(grid_thw)),), label)
    out = separated_vision_forward(visual, pixel_values, grid_thw, labels)
    ref = _stock(visual, pixel_values, grid_thw)
    atol = 1e-6 if arch == "qwen2_vl" else 1e-5
    torch.testing.assert_close(out, ref, rtol=0, atol=atol)


@pytest.mark.parametrize("arch", ARCHS)
@torch.no_grad()
def test_bottom_object_band_background_equals_cropped_stock(towers, arch):
    """Object = full-width bottom rows: the background equals the stock tower on the top rows alone."""
    visual = towers[arch]
    pixel_values, grid_thw = _inputs([(10, 12)])
    rows, unit_w = 3, 6  # 3 unit rows of background: not window-aligned on purpose for 2.5-VL
    labels = (torch.arange(5 * unit_w) >= rows * unit_w).long()
    out = separated_vision_forward(visual, pixel_values, grid_thw, labels)
    n_top = rows * unit_w
    ref = _stock(visual, pixel_values[: n_top * MERGE**2], torch.tensor([[1, rows * MERGE, 12]]))
    torch.testing.assert_close(out[:n_top], ref, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------------- independence


@pytest.mark.parametrize("arch", ARCHS)
@torch.no_grad()
def test_groups_are_independent(towers, arch):
    visual = towers[arch]
    pixel_values, grid_thw = _inputs([(8, 12), (10, 6)])
    labels = _mixed_labels(grid_thw)
    bg_rows, obj_rows = _row_groups(labels, _units(grid_thw))
    obj_patches = _patch_mask(labels)
    base = separated_vision_forward(visual, pixel_values, grid_thw, labels)

    new_obj = pixel_values.clone()
    new_obj[obj_patches] = torch.randn(int(obj_patches.sum()), PATCH_DIM)
    out = separated_vision_forward(visual, new_obj, grid_thw, labels)
    assert torch.equal(out[bg_rows], base[bg_rows])
    assert not torch.isclose(out[obj_rows], base[obj_rows]).all(dim=1).any()

    new_bg = pixel_values.clone()
    first_bg = int((~obj_patches).nonzero()[0])
    new_bg[first_bg] = torch.randn(PATCH_DIM)
    out = separated_vision_forward(visual, new_bg, grid_thw, labels)
    assert torch.equal(out[obj_rows], base[obj_rows])
    assert not torch.equal(out[bg_rows], base[bg_rows])


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _masked_attention(attn: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor):
    """Dense attention over all patches of the batch with a boolean [N, N] mask, in original order."""
    n = x.shape[0]
    q, k, v = attn.qkv(x).reshape(n, 3, attn.num_heads, -1).permute(1, 2, 0, 3).unbind(0)
    q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return attn.proj(out.transpose(0, 1).reshape(n, -1))


def _masked_reference(visual: nn.Module, pixel_values, grid_thw, labels) -> torch.Tensor:
    """Independent reference: stock patch order, attention masked to (image, group[, window])."""
    ws = getattr(visual, "window_size", 0) // MERGE // 14
    image, window = [], []
    for img, (_, h, w) in enumerate(grid_thw.tolist()):
        unit = torch.arange(h * w // 4)
        image.append(torch.full_like(unit, img))
        window.append(unit // (w // 2) // ws * 1000 + unit % (w // 2) // ws if ws else unit * 0)
    key = [t.repeat_interleave(4) for t in (torch.cat(image), labels.long(), torch.cat(window))]
    same_group = (key[0][:, None] == key[0]) & (key[1][:, None] == key[1])
    same_window = same_group & (key[2][:, None] == key[2])
    emb = visual.rot_pos_emb(grid_thw)
    emb = torch.cat((emb, emb), dim=-1)
    cos, sin = emb.cos()[None], emb.sin()[None]
    hidden = visual.patch_embed(pixel_values)
    for i, blk in enumerate(visual.blocks):
        mask = same_window if ws and i not in visual.fullatt_block_indexes else same_group
        hidden = hidden + _masked_attention(blk.attn, blk.norm1(hidden), cos, sin, mask)
        hidden = hidden + blk.mlp(blk.norm2(hidden))
    return visual.merger(hidden)[_expected_order(labels, _units(grid_thw))]


@pytest.mark.parametrize("arch", ARCHS)
@torch.no_grad()
def test_matches_masked_dense_reference(towers, arch):
    visual = towers[arch]
    pixel_values, grid_thw = _inputs([(8, 12), (10, 6)], seed=3)
    labels = _mixed_labels(grid_thw, seed=4)
    out = separated_vision_forward(visual, pixel_values, grid_thw, labels)
    ref = _masked_reference(visual, pixel_values, grid_thw, labels)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    # the reference is sensitive to the masks: without window masking 2.5-VL would differ
    assert not torch.allclose(out, _stock(visual, pixel_values, grid_thw)[_expected_order(labels, _units(grid_thw))])


# ------------------------------------------------------------------------------------------ batches, order


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three images: no object, fully object, mixed."""
    pixel_values, grid_thw = _inputs([(8, 12), (10, 6), (6, 8)], seed=5)
    units = _units(grid_thw)
    mixed = _mixed_labels(grid_thw[2:], seed=6)
    labels = torch.cat([torch.zeros(units[0], dtype=torch.long), torch.ones(units[1], dtype=torch.long), mixed])
    return pixel_values, grid_thw, labels


@pytest.mark.parametrize("arch", ARCHS)
@torch.no_grad()
def test_batch_counts_and_order(towers, arch):
    visual = towers[arch]
    pixel_values, grid_thw, labels = _batch()
    units = _units(grid_thw)
    layout = _layout(grid_thw, labels)
    assert [layout.n_background(i) for i in range(3)] == [24, 0, int((labels[39:] == 0).sum())]
    assert [layout.n_object(i) for i in range(3)] == [0, 15, int(labels[39:].sum())]
    token_order = torch.cat([layout.token_units(i) + layout.offset(i) for i in range(3)])
    assert torch.equal(token_order, _expected_order(labels, units))

    out = separated_vision_forward(visual, pixel_values, grid_thw, labels)
    assert out.shape == (sum(units), 64)
    # single-group images inside a mixed batch equal the stock tower on that image alone
    torch.testing.assert_close(out[:24], _stock(visual, pixel_values[:96], grid_thw[:1]), rtol=0, atol=1e-5)
    torch.testing.assert_close(out[24:39], _stock(visual, pixel_values[96:156], grid_thw[1:2]), rtol=0, atol=1e-5)

    # with attention switched off every token depends only on its own patches: the output is the
    # all-background stock output permuted into bg-then-obj row-major order
    tokenwise = copy.deepcopy(visual)
    for blk in tokenwise.blocks:
        nn.init.zeros_(blk.attn.proj.weight)
        nn.init.zeros_(blk.attn.proj.bias)
    out = separated_vision_forward(tokenwise, pixel_values, grid_thw, labels)
    ref = _stock(tokenwise, pixel_values, grid_thw)[_expected_order(labels, units)]
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    assert not torch.allclose(out, _stock(tokenwise, pixel_values, grid_thw))  # the order is not trivial


# ------------------------------------------------------------------------------------- gradients, errors


@pytest.mark.parametrize("arch", ARCHS)
def test_gradients_flow_and_stay_in_group(towers, arch):
    visual = copy.deepcopy(towers[arch])
    pixel_values, grid_thw = _inputs([(8, 12), (10, 6)])
    pixel_values.requires_grad_(True)
    labels = _mixed_labels(grid_thw)
    bg_rows, _ = _row_groups(labels, _units(grid_thw))
    out = separated_vision_forward(visual, pixel_values, grid_thw, labels)
    out[bg_rows].square().sum().backward()
    obj_patches = _patch_mask(labels)
    assert torch.count_nonzero(pixel_values.grad[obj_patches]) == 0
    assert (pixel_values.grad[~obj_patches].abs().sum(dim=1) > 0).all()
    params = [visual.patch_embed.proj.weight, visual.merger.mlp[0].weight]
    params += [p for blk in visual.blocks for p in (blk.attn.qkv.weight, blk.attn.proj.weight)]
    for p in params:
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_errors(towers):
    visual = towers["qwen2_vl"]
    pixel_values, grid_thw = _inputs([(8, 12)])
    with pytest.raises(ValueError, match="layout has 23 unit groups"):
        separated_vision_forward(visual, pixel_values, grid_thw, torch.zeros(23, dtype=torch.long))
    with pytest.raises(ValueError, match="pixel_values has 96 rows, the layout's grids imply 192"):
        separated_vision_forward(visual, pixel_values, torch.tensor([[2, 8, 12]]), torch.zeros(48, dtype=torch.long))
    with pytest.raises(ValueError, match="0 = background"):
        _layout(grid_thw, torch.full((24,), 2))


@pytest.mark.parametrize("arch", ARCHS)
@torch.no_grad()
def test_slices_single_group_matches_stock_video_grid(towers, arch):
    """t > 1 (a clip of two temporal slices): one group equals the stock tower, which attends per slice."""
    visual = towers[arch]
    gen = torch.Generator().manual_seed(7)
    grid_thw = torch.tensor([[2, 8, 12]])
    pixel_values = torch.randn(2 * 8 * 12, PATCH_DIM, generator=gen)
    out = separated_vision_forward(visual, pixel_values, grid_thw, torch.zeros(2 * 24, dtype=torch.long))
    torch.testing.assert_close(out, _stock(visual, pixel_values, grid_thw), rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
@torch.no_grad()
def test_object_only_encoding_equals_the_object_rows(towers, arch):
    """What a cache hit computes: the object group alone gives the object rows of the full encoding."""
    visual = towers[arch]
    pixel_values, grid_thw = _inputs([(8, 12), (10, 6)], seed=9)
    labels = _mixed_labels(grid_thw, seed=10)
    full = separated_vision_forward(visual, pixel_values, grid_thw, labels)
    objects = separated_vision_forward(visual, pixel_values, grid_thw, labels, groups=(Group.OBJECT,))
    _, obj_rows = _row_groups(labels, _units(grid_thw))
    torch.testing.assert_close(objects, full[obj_rows], rtol=0, atol=1e-5)
