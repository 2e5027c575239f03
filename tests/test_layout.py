"""ImageLayout (one object for every separated item), token spans, and the model-family registry."""

from __future__ import annotations

import pytest
import torch

from lf_ext.layout import BG_END, BG_START, OBJ_END, OBJ_START, Group, ImageLayout, SeparatorIds, find_spans, respan

IDS = SeparatorIds(bg_start=91, bg_end=92, obj_start=93, obj_end=94, image=7)


def _two_items() -> ImageLayout:
    """A 2x3 image (one object unit) and a 2-slice 2x2 clip with one dropped unit per slice."""
    image = [0, 0, 1, 0, 0, 0]
    clip = [0, 1, 2, 0, 2, 0, 1, 0]  # slice 0: bg obj drop bg | slice 1: drop bg obj bg
    return ImageLayout(((1, 2, 3), (2, 2, 2)), torch.tensor(image + clip))


def test_counts_order_and_placeholder():
    layout = _two_items()
    assert len(layout) == 2 and layout.sizes == [6, 8] and layout.offset(1) == 6
    assert (layout.n_background(0), layout.n_object(0)) == (5, 1)
    assert (layout.n_background(1), layout.n_object(1), layout.count(Group.DROPPED, 1)) == (4, 2, 2)
    assert layout.n_tokens() == 12
    assert layout.token_units(1).tolist() == [0, 3, 5, 7, 1, 6]  # background (slice, row, col) order, then object
    assert layout.token_units(1, (Group.OBJECT,)).tolist() == [1, 6]
    assert layout.placeholder(0, "<i>") == f"{BG_START}{'<i>' * 5}{BG_END}{OBJ_START}<i>{OBJ_END}"
    assert layout.object_labels(1).shape == (2, 2, 2) and int(layout.object_labels(1).sum()) == 2


def test_pack_round_trip_and_with_item():
    layout = _two_items()
    packed = layout.pack()
    assert packed.dtype == torch.long and packed.dim() == 1
    back = ImageLayout.unpack(packed)
    assert back.grids == layout.grids and torch.equal(back.groups, layout.groups)
    assert ImageLayout.coerce(packed).grids == layout.grids and ImageLayout.coerce(None) is None
    changed = layout.with_item(0, torch.ones(6, dtype=torch.int8))
    assert changed.n_object(0) == 6 and torch.equal(changed.item_groups(1), layout.item_groups(1))
    assert torch.equal(layout.item_groups(0).reshape(-1), torch.tensor([0, 0, 1, 0, 0, 0], dtype=torch.int8))  # unchanged
    assert ImageLayout.concat([layout.item(1), layout.item(0)]).grids == ((2, 2, 2), (1, 2, 3))


def test_bad_layouts_are_clear_errors():
    with pytest.raises(ValueError, match="5 unit groups for grids"):
        ImageLayout(((1, 2, 3),), torch.zeros(5, dtype=torch.int8))
    with pytest.raises(ValueError, match="0 \\(background\\), 1 \\(object\\), 2 \\(dropped background\\) or 3"):
        ImageLayout(((1, 1, 2),), torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="a plain layout has no object group"):
        ImageLayout(((1, 1, 2),), torch.tensor([0, 1]), separated=False)
    with pytest.raises(ValueError, match="sizes >= 1"):
        ImageLayout(((1, 0, 2),), torch.zeros(0))
    with pytest.raises(ValueError, match="0 = background, 1 = object"):
        ImageLayout.from_labels([(1, 1, 2)], torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match="not a packed ImageLayout"):
        ImageLayout.unpack(torch.tensor([9, 1, 1, 1, 1, 1, 0]))


def test_spans_parse_and_respan():
    ids = [1, 2, IDS.bg_start, 7, 7, IDS.bg_end, IDS.obj_start, 7, IDS.obj_end, 3]
    (span,) = find_spans(ids, IDS)
    assert (span.bg_start, span.n_background, span.n_object, span.prefix_end, span.obj_end) == (2, 2, 1, 6, 8)
    longer = respan(torch.tensor([ids]), span, 1, 3, IDS)
    assert longer[0].tolist() == [1, 2, IDS.bg_start, 7, IDS.bg_end, IDS.obj_start, 7, 7, 7, IDS.obj_end, 3]
    with pytest.raises(ValueError, match="visual token at 0 outside"):
        find_spans([7] + ids, IDS)
    with pytest.raises(ValueError, match="expected \\[OBJ_END\\]"):
        find_spans(ids[:-2], IDS)


def test_positions_of_a_two_slice_item_keep_stock_coordinates():
    """t > 1: every token at (s + slice, s + row, s + col); [BG_END] where stock text after the item starts."""
    from lf_ext.families.qwen.positions import layout_positions

    layout = ImageLayout(((2, 2, 3),), torch.tensor([0, 0, 1, 0, 0, 0, 2, 1, 0, 0, 2, 0]))
    n_bg, n_obj = layout.n_background(0), layout.n_object(0)
    ids = torch.tensor([[5, IDS.bg_start] + [7] * n_bg + [IDS.bg_end, IDS.obj_start] + [7] * n_obj + [IDS.obj_end, 6]])
    positions, deltas = layout_positions(ids, layout, IDS)
    s = 2  # the position after [BG_START]
    expected = [(t, r, c) for group in (0, 1) for t in range(2) for r in range(2) for c in range(3)
                if int(layout.item_groups(0)[t, r, c]) == group]  # fmt: skip
    visual = [i for i, t in enumerate(ids[0].tolist()) if t == 7]
    assert [tuple(positions[:, 0, i].tolist()) for i in visual] == [(s + t, s + r, s + c) for t, r, c in expected]
    bg_end = ids[0].tolist().index(IDS.bg_end)
    assert positions[:, 0, bg_end].tolist() == [s + 3] * 3  # max(rows, cols) = 3
    assert int(deltas[0, 0]) == int(positions.max()) + 1 - ids.shape[1]


def test_clip_positions_equal_transformers_video_positions():
    """A plain video layout with every unit kept reproduces Qwen2.5-VL's stock ``get_rope_index`` for a video
    (time step tokens_per_second * second_per_grid, text after the clip at s + max(rows, cols), even when the
    clip has more slices than rows or columns); the separated layout keeps those (t, h, w) for every token."""
    from types import SimpleNamespace

    from transformers import Qwen2_5_VLConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel

    from lf_ext.families.qwen.positions import layout_positions

    config = Qwen2_5_VLConfig(vision_config={"tokens_per_second": 2, "spatial_merge_size": 2})
    fake = SimpleNamespace(config=config)
    fake.get_vision_position_ids = lambda *a, **k: Qwen2_5_VLModel.get_vision_position_ids(fake, *a, **k)
    slices, rows, cols, video = 5, 2, 3, 8
    ids = torch.tensor([[5, 6] + [video] * (slices * rows * cols) + [6, 5, 5]])
    types = (ids == video).int() * 2
    stock, stock_delta = Qwen2_5_VLModel.get_rope_index(fake, ids, types, video_grid_thw=torch.tensor([[slices, 4, 6]]),
                                                        second_per_grid_ts=torch.tensor([1.0]))  # fmt: skip
    plain = ImageLayout(((slices, rows, cols),), torch.zeros(slices * rows * cols, dtype=torch.int8), separated=False, slice_seconds=(1,))
    ours, delta = layout_positions(ids, plain, SeparatorIds(-1, -1, -1, -1, video), tokens_per_second=2)
    assert torch.equal(ours, stock) and torch.equal(delta, stock_delta)
    groups = torch.randint(0, 2, (slices * rows * cols,))
    separated = ImageLayout(plain.grids, groups, slice_seconds=(1,))
    n_bg, n_obj = separated.n_background(0), separated.n_object(0)
    sep_ids = torch.tensor([[5, 6, IDS.bg_start] + [7] * n_bg + [IDS.bg_end, IDS.obj_start] + [7] * n_obj + [IDS.obj_end, 6]])
    positions, _ = layout_positions(sep_ids, separated, IDS, tokens_per_second=2)
    visual = [i for i, t in enumerate(sep_ids[0].tolist()) if t == 7]
    stock_of_unit = stock[:, 0, 2 : 2 + slices * rows * cols] + 1  # one more text token ([BG_START]) before the clip
    assert torch.equal(positions[:, 0, visual], stock_of_unit[:, separated.token_units(0)])
    assert positions[:, 0, sep_ids[0].tolist().index(IDS.bg_end)].tolist() == [3 + max(rows, cols)] * 3


def test_clip_groups_background_once_objects_where_they_change():
    from lf_ext.layout import clip_groups

    background = torch.tensor([[True, False], [True, False]])
    token_at = torch.tensor([[[False, False], [False, False]], [[False, True], [False, False]], [[True, False], [False, True]]])
    groups = clip_groups(background, token_at)
    assert groups[0].tolist() == [[0, 1], [0, 1]]  # the first slice: background tokens and object tokens
    assert groups[1].tolist() == [[2, 1], [2, 3]]  # later: a token only where the unit changed
    assert groups[2].tolist() == [[1, 3], [2, 1]]  # a background unit that changes gets an object token there
    layout = ImageLayout(((3, 2, 2),), groups.reshape(-1))
    assert layout.n_background(0) == 2 and layout.n_object(0) == 2 + 1 + 2
    assert layout.object_labels(0)[0].tolist() == [[False, True], [False, True]]  # the split is the first slice's


def test_tokens_on_change_compares_with_the_previous_token():
    import numpy as np

    from lf_ext.plugins.clip_labels import tokens_on_change

    values = {"still": [0, 0, 0, 0, 0, 0], "moves_once": [0, 0, 50, 50, 50, 50], "back_and_forth": [0, 0, 50, 50, 0, 0],
              "drifts": [0, 0, 3, 3, 6, 6], "second_frame": [0, 0, 0, 50, 50, 50]}  # fmt: skip
    frames = np.zeros((6, 1, len(values), 1, 1, 3), np.uint8)
    for col, series in enumerate(values.values()):
        frames[:, 0, col] = np.array(series, np.uint8)[:, None, None, None]
    token_at = tokens_on_change(frames, temporal=2, threshold=4.0)
    assert token_at[:, 0].T.tolist() == [[True, False, False], [True, True, False], [True, True, True],
                                         [True, False, True], [True, True, True]]  # fmt: skip
    # (second_frame: its slice-1 token saw (0, 50); (50, 50) differs from the first frame of that slice)


def test_family_registry_and_import_hook_agree():
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

    from lf_ext._import_hook import PATCHES
    from lf_ext.families import all_families, family_for_template, family_of, family_for_type

    families = all_families()
    assert {f.name for f in families} >= {"qwen2_vl", "qwen2_5_vl"}
    for family in families:
        for module in family.init_targets:  # the hook must patch every module a family creates modules in
            assert PATCHES.get(module) == "lf_ext.patches.model_init:patch_model_classes"
        assert family_for_template(family.template).template == family.template
    assert family_of(Qwen2VLConfig()).name == "qwen2_vl" and family_of(Qwen2_5_VLConfig()).name == "qwen2_5_vl"
    assert family_for_type("bert") is None
