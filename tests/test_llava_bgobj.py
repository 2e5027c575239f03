"""llava_bgobj on a tiny LLaVA-1.5 (CLIP + Llama, fp32): exactness, independence, cache, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bgobj_helpers import encode, load_for_inference, masked_dataset, unit_labels
from lf_ext.families import family_of
from lf_ext.layout import LAYOUT_KEY, Group, ImageLayout
from lf_ext.masks.base import MaskError

SIZE, BOX = (336, 336), (112, 56, 196, 140)  # no resize at image_max_pixels=336*336: the box is 6x6 patches


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = masked_dataset(tmp_path_factory.mktemp("llava_masked"), size=SIZE, box=BOX, count=3)
    pixels = np.asarray(Image.open(root / "img0.png")).copy()
    pixels[:30, :80] = 255 - pixels[:30, :80]
    Image.fromarray(pixels).save(root / "changed_bg.png")
    return root


def _load(tiny_dir, data, **extra):
    return load_for_inference(tiny_dir("llava"), data, template="llava_bgobj", image_max_pixels=SIZE[0] * SIZE[1], **extra)


@pytest.fixture(scope="module")
def loaded(tiny_dir, data):
    tok, template, model = _load(tiny_dir, data)
    for module in model.model.vision_tower.modules():  # std=0.02 makes CLIP attention ~uniform and blind to positions
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=module.in_features**-0.5)
    return tok, template, model


def _inputs(loaded, data, name):
    tok, template, _ = loaded
    return encode(tok, template, [str(data / name)])


def test_layout_one_token_per_patch(loaded, data):
    tok, _, model = loaded
    ids, inputs = _inputs(loaded, data, "img0.png")
    layout = ImageLayout.unpack(inputs[LAYOUT_KEY])
    assert layout.grids == ((1, 24, 24),)
    assert (layout.n_background(0), layout.n_object(0)) == (576 - 36, 36)
    assert unit_labels(inputs).view(24, 24)[4:10, 8:14].all()  # the box's 6x6 patches
    assert int((ids == model.config.image_token_id).sum()) == 576
    separators = tok["tokenizer"].convert_tokens_to_ids(["[BG_START]", "[BG_END]", "[OBJ_START]", "[OBJ_END]"])
    assert all(int((ids == s).sum()) == 1 for s in separators)


@torch.no_grad()
def test_one_group_is_the_stock_tower_bitwise(loaded, data):
    _, _, model = loaded
    family = family_of(model)
    _, inputs = _inputs(loaded, data, "img1.png")
    for group in (Group.BACKGROUND, Group.OBJECT):
        layout = ImageLayout(((1, 24, 24),), torch.full((576,), int(group), dtype=torch.int8))
        ours = family.encode(model, inputs["pixel_values"], layout)
        assert torch.equal(ours, family.stock_features(model, inputs))


@torch.no_grad()
def test_background_independence_and_that_the_test_can_fail(loaded, data):
    """Changing object pixels leaves background tokens and the prefix's hidden states bit-identical; the
    stock (joint) encoding of the same two images does change its background rows."""
    tok, _, model = loaded
    family = family_of(model)
    ids_a, a = _inputs(loaded, data, "img0.png")
    ids_b, b = _inputs(loaded, data, "img1.png")
    assert torch.equal(ids_a, ids_b) and not torch.equal(a["pixel_values"], b["pixel_values"])
    layout = ImageLayout.unpack(a[LAYOUT_KEY])
    n_bg = layout.n_background(0)
    tokens_a, tokens_b = family.encode(model, a["pixel_values"], layout), family.encode(model, b["pixel_values"], layout)
    assert torch.equal(tokens_a[:n_bg], tokens_b[:n_bg]) and not torch.allclose(tokens_a[n_bg:], tokens_b[n_bg:])
    background = ~layout.object_labels(0).reshape(-1)
    stock_a, stock_b = family.stock_features(model, a), family.stock_features(model, b)
    assert not torch.equal(stock_a[background], stock_b[background])  # without separation the background sees the object
    out_a = model(input_ids=ids_a, output_hidden_states=True, **a)
    out_b = model(input_ids=ids_b, output_hidden_states=True, **b)
    bg_end = ids_a[0].tolist().index(tok["tokenizer"].convert_tokens_to_ids("[BG_END]"))
    for layer_a, layer_b in zip(out_a.hidden_states, out_b.hidden_states):
        assert torch.equal(layer_a[:, : bg_end + 1], layer_b[:, : bg_end + 1])
    assert not torch.allclose(out_a.hidden_states[-1][:, bg_end + 1 :], out_b.hidden_states[-1][:, bg_end + 1 :])


def test_vision_feature_layer_lists_match_stock(tiny_dir, data):
    """A list of feature layers is concatenated like stock (the projector widened to match)."""
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_dir("llava")).eval()
    model.config.vision_feature_layer = [-2, -1]
    inner = model.model
    old = inner.multi_modal_projector.linear_1
    inner.multi_modal_projector.linear_1 = torch.nn.Linear(old.in_features * 2, old.out_features)
    model.config.bgobj = {"split_projector": False}
    family = family_of(model)
    pixel_values = torch.randn(2, 3, 336, 336)
    layout = ImageLayout(((1, 24, 24),) * 2, torch.zeros(2 * 576, dtype=torch.int8))
    with torch.no_grad():
        assert torch.equal(family.encode(model, pixel_values, layout), family.stock_features(model, {"pixel_values": pixel_values}))


def test_full_strategy_is_refused(tiny_dir, data):
    from lf_ext.families.llava.vision import check_tower

    _, _, model = _load(tiny_dir, data)
    with pytest.raises(ValueError, match="vision_feature_select_strategy 'default'"):
        check_tower(model.model.vision_tower, "full")


@pytest.mark.parametrize("budget", [{}, dict(bgobj_patch_selection="budget", bgobj_patch_alpha=0.5)], ids=["all_units", "budget"])
@torch.no_grad()
def test_hit_logits_equal_recompute_and_generate_matches(tiny_dir, data, budget):
    """Invariant 3 on LLaVA: a hit's logits equal the model's own forward with the hit's layout; generate
    through the cache equals generate without it (tokens and scores); also when a token budget drops units."""
    from lf_ext.cache import BackgroundCache
    from lf_ext.inference.reuse import BackgroundReuse
    from lf_ext.config import Settings
    from lf_ext.inference.runtime import BgObjRuntime, attach_runtime
    from lf_ext.selection import PatchSelection

    tok, template, model = _load(tiny_dir, data, bgobj_prefusion_layers=1, bgobj_split_projector=True, **budget)
    model.model.bgobj.prefusion.gates.fill_(0.7)
    family = family_of(model)
    pixels = family.pixel_units(tok["processor"].image_processor)
    selection = PatchSelection.from_settings(Settings.from_dict(budget).keys)
    reuse = BackgroundReuse(model, family, BackgroundCache(1 << 30), pixels, selection=selection)
    ids, inputs = encode(tok, template, [str(data / "img0.png")])
    assert reuse.prefill(ids, inputs["pixel_values"], ImageLayout.unpack(inputs[LAYOUT_KEY])).outcome.kind == "miss"
    ids, inputs = encode(tok, template, [str(data / "img1.png")])
    hit = reuse.prefill(ids, inputs["pixel_values"], ImageLayout.unpack(inputs[LAYOUT_KEY]))
    request = ImageLayout.unpack(inputs[LAYOUT_KEY])
    assert hit.outcome.kind == "hit" and hit.outcome.object_units == request.n_object(0) == (18 if budget else 36)
    assert torch.equal(hit.layout.groups, request.groups)  # the hit serves the request's own split and budget
    out = model(input_ids=hit.input_ids, pixel_values=inputs["pixel_values"], bgobj_layout=hit.layout.pack())
    torch.testing.assert_close(hit.logits, out.logits[:, -1].float(), rtol=0, atol=1e-5)
    if budget:  # a hit whose split is longer than the request's (no budget on its object): the last token's logits still
        unbudgeted = BackgroundReuse(model, family, BackgroundCache(1 << 30), pixels)
        for name in ("img0.png", "img1.png"):
            ids, inputs = encode(tok, template, [str(data / name)])
            longer = unbudgeted.prefill(ids, inputs["pixel_values"], ImageLayout.unpack(inputs[LAYOUT_KEY]))
        assert longer.outcome.kind == "hit" and longer.input_ids.shape[1] == ids.shape[1] + 18
        out = model(input_ids=longer.input_ids, pixel_values=inputs["pixel_values"], bgobj_layout=longer.layout.pack())
        torch.testing.assert_close(longer.logits, out.logits[:, -1].float(), rtol=0, atol=1e-5)

    answers = {}
    for cached in (False, True):
        runtime = attach_runtime(model, BgObjRuntime(model, family, BackgroundReuse(model, family, BackgroundCache(1 << 30), pixels, selection=selection) if cached else None))
        for name in ("img0.png", "img1.png", "img2.png"):
            ids, inputs = encode(tok, template, [str(data / name)])
            out = model.generate(inputs=ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False,
                                 output_scores=True, return_dict_in_generate=True, **inputs)  # fmt: skip
            answers[cached, name] = out.sequences[0, ids.shape[1] :].tolist(), torch.stack(out.scores).float()
    assert runtime.stats()["hits"] == 2 and runtime.stats()["misses"] == 1
    for name in ("img0.png", "img1.png", "img2.png"):
        assert answers[True, name][0] == answers[False, name][0]
        torch.testing.assert_close(answers[True, name][1], answers[False, name][1], rtol=0, atol=1e-4)


@torch.no_grad()
def test_prefusion_and_split_projector_start_as_the_model(tiny_dir, data):
    tok, template, plain = _load(tiny_dir, data)
    _, _, fused = _load(tiny_dir, data, bgobj_prefusion_layers=1, bgobj_split_projector=True)
    modules = fused.model.bgobj
    assert torch.equal(modules.merger_object.linear_1.weight, fused.model.multi_modal_projector.linear_1.weight)
    assert torch.equal(modules.prefusion.layers[0].self_attn.q_proj.weight, fused.model.language_model.layers[0].self_attn.q_proj.weight)
    ids, inputs = encode(tok, template, [str(data / "img0.png")])
    torch.testing.assert_close(fused(input_ids=ids, **inputs).logits, plain(input_ids=ids, **inputs).logits, rtol=0, atol=1e-6)


def test_refined_rejection_on_llava(loaded, data):
    from lf_ext.cache import BackgroundCache
    from lf_ext.inference.reuse import BackgroundReuse

    tok, template, model = loaded
    family = family_of(model)
    reuse = BackgroundReuse(model, family, BackgroundCache(1 << 30), family.pixel_units(tok["processor"].image_processor))
    ids, inputs = encode(tok, template, [str(data / "img0.png")])
    reuse.prefill(ids, inputs["pixel_values"], ImageLayout.unpack(inputs[LAYOUT_KEY]))
    ids, inputs = encode(tok, template, [str(data / "changed_bg.png")])
    layout = ImageLayout.unpack(inputs[LAYOUT_KEY])
    refined = reuse.prefill(ids, inputs["pixel_values"], layout)
    assert refined.outcome.kind == "rejection" and refined.outcome.refined
    fresh = reuse.prefill(refined.input_ids, inputs["pixel_values"], refined.layout, use_cache=False)
    torch.testing.assert_close(refined.logits, fresh.logits, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------- bad input (DESIGN §10)


@pytest.mark.parametrize("size", [(1000, 20), (20, 1000), (10, 10), (5000, 5)])
def test_extreme_sizes_give_the_processors_grid(loaded, tmp_path, size):
    Image.new("RGB", size, (40, 90, 200)).save(tmp_path / "odd.png")
    ids, inputs = _inputs(loaded, tmp_path, "odd.png")
    assert ImageLayout.unpack(inputs[LAYOUT_KEY]).grids == ((1, 24, 24),) and int((ids == loaded[2].config.image_token_id).sum()) == 576


def test_bad_images_and_masks_name_the_sample(loaded, data, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    for name in ("broken.png", "absent.png"):
        with pytest.raises(MaskError, match=f"request, image 1 of 1: .*{name}: cannot be read"):
            _inputs(loaded, tmp_path, name)


@pytest.mark.parametrize("fill, object_units", [(0, 0), (255, 576)])
def test_empty_and_full_masks(tiny_dir, tmp_path, fill, object_units):
    root = masked_dataset(tmp_path / "m", size=SIZE, box=BOX, count=1)
    Image.new("L", SIZE, fill).save(root / "mask.png")
    tok, template, _ = _load(tiny_dir, root)
    _, inputs = encode(tok, template, [str(root / "img0.png")])
    assert int(unit_labels(inputs).sum()) == object_units


def test_wrong_size_mask_is_an_error_naming_the_sample(tiny_dir, tmp_path):
    root = masked_dataset(tmp_path / "m", size=SIZE, box=BOX, count=1)
    Image.new("L", (100, 100), 255).save(root / "mask.png")
    tok, template, _ = _load(tiny_dir, root, bgobj_mask_fallback="error")
    with pytest.raises(MaskError, match="img0.png: mask .*mask.png is 100x100, image is 336x336"):
        encode(tok, template, [str(root / "img0.png")])


def test_pad_to_square_mode_moves_the_mask_with_the_pixels(tiny_dir, tmp_path):
    """With ``LlavaImageProcessor(do_pad=True)`` a 336x224 image is padded to 336x336 (56 px above and below):
    the mask's units move down by 4 patches, and the padding is background."""
    import shutil

    from transformers import AutoTokenizer

    from lf_ext.families.llava.tiny import llava_processor

    model_dir = tmp_path / "llava_pad"
    shutil.copytree(tiny_dir("llava"), model_dir)
    llava_processor(AutoTokenizer.from_pretrained(model_dir), pad=True).save_pretrained(model_dir)
    root = masked_dataset(tmp_path / "m", size=(336, 224), box=BOX, count=1)
    tok, template, _ = load_for_inference(model_dir, root, template="llava_bgobj", image_max_pixels=336 * 336)
    assert tok["processor"].image_processor.do_pad
    _, inputs = encode(tok, template, [str(root / "img0.png")])
    labels = unit_labels(inputs).view(24, 24).bool()
    expected = torch.zeros(24, 24, dtype=torch.bool)
    expected[4 + 4 : 10 + 4, 8:14] = True
    assert torch.equal(labels, expected)


@torch.no_grad()
def test_sibling_training_serves_a_hit_bit_for_bit(loaded, tmp_path):
    """bgobj_sibling_prob on LLaVA: a training image gets its sibling's patches on B (the sibling's background
    minus its own object), object = NOT B, and its background tokens are the sibling's, bit for bit."""
    import json

    from lf_ext.config import Settings, parse_bgobj_args

    tok, template, model = loaded
    family = family_of(model)
    root = tmp_path / "siblings"
    root.mkdir()
    rng = np.random.default_rng(5)
    plate = rng.integers(0, 256, size=(336, 336, 3), dtype=np.uint8)
    records = []
    for index, (x0, y0, x1, y1) in enumerate([(28, 28, 112, 112), (196, 196, 280, 280), (28, 196, 112, 280)]):
        pixels, mask = plate.copy(), np.zeros((336, 336), np.uint8)
        pixels[y0:y1, x0:x1] = rng.integers(0, 256, size=(y1 - y0, x1 - x0, 3), dtype=np.uint8)
        mask[y0:y1, x0:x1] = 255
        Image.fromarray(pixels).save(root / f"s{index}.png")
        Image.fromarray(mask).save(root / f"s{index}_mask.png")
        records.append({"messages": [{"role": "user", "content": "<image>Q"}, {"role": "assistant", "content": "A"}],
                        "images": [f"s{index}.png"], "masks": [f"s{index}_mask.png"], "meta": {"sibling_group": "g"}})  # fmt: skip
    (root / "data.json").write_text(json.dumps(records))
    (root / "dataset_info.json").write_text(json.dumps({"sib": {"file_name": "data.json", "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}}}))  # fmt: skip

    def plugin(prob):
        keys = parse_bgobj_args({"bgobj_mask_provider": "dataset", "bgobj_sibling_prob": prob})
        return template.mm_plugin.bind(Settings(keys, {"do_train": True, "dataset": "sib", "dataset_dir": str(root)}))

    processor = tok["processor"]
    own = {i: plugin(0.0)._get_mm_inputs([str(root / f"s{i}.png")], [], [], processor) for i in range(3)}
    served = 0
    sampler = plugin(1.0)
    for i in range(3):
        x = sampler._get_mm_inputs([str(root / f"s{i}.png")], [], [], processor)
        sibling = sampler.siblings.sibling_of(str(root / f"s{i}.png"), (1, 24, 24))
        if sibling is None:
            continue
        served += 1
        s = own[int(sibling.rsplit("s", 1)[-1][0])]
        layout = ImageLayout.unpack(x[LAYOUT_KEY])
        labels = unit_labels(x)
        assert torch.equal(labels, unit_labels(s) | unit_labels(own[i]))
        n_bg = layout.n_background(0)
        mine, theirs = family.encode(model, x["pixel_values"], layout), family.encode(model, s["pixel_values"], layout)
        assert torch.equal(mine[:n_bg], theirs[:n_bg])
    assert served >= 2


def test_positions_follow_the_stock_raster_walk():
    """Each visual token sits at its unit's stock position (s + raster index), [BG_END] [OBJ_START] after the
    image's N units, [OBJ_END] and the text after at their sequence index; left padding shifts nothing;
    with dropped units the kept ones keep their raster positions and the prefix up to [BG_END] does not
    depend on what the object keeps."""
    from lf_ext.families.llava.positions import layout_positions
    from lf_ext.layout import SeparatorIds

    ids = SeparatorIds(bg_start=101, bg_end=102, obj_start=103, obj_end=104, image=9)
    labels = torch.tensor([0, 1, 0, 0, 1, 0], dtype=torch.bool)  # a (1, 2, 3) grid, units 1 and 4 object
    layout = ImageLayout.from_labels([(1, 2, 3)], labels)
    row = [7, 8, 101, 9, 9, 9, 9, 102, 103, 9, 9, 104, 5, 6]
    got = layout_positions(torch.tensor([row]), layout, ids)
    s = 3  # [BG_START] at position 2
    expected = [0, 1, 2, s + 0, s + 2, s + 3, s + 5, s + 6, s + 7, s + 1, s + 4, 11, 12, 13]
    assert got.tolist() == [expected] and expected[-3:] == [s + 8, s + 9, s + 10]  # no drops: as stock after the image

    padded = torch.tensor([[0, 0] + row])
    mask = torch.tensor([[0, 0] + [1] * len(row)])
    assert layout_positions(padded, layout, ids, mask)[0, 2:].tolist() == expected

    object_dropped = layout.with_kept(0, torch.tensor([True, False, True, True, True, True]))
    short = [7, 8, 101, 9, 9, 9, 9, 102, 103, 9, 104, 5]
    got = layout_positions(torch.tensor([short]), object_dropped, ids)[0].tolist()
    assert got[:9] == expected[:9]  # the prefix up to [OBJ_START]: the background's only
    assert got[9:] == [s + 4, 10, 11]  # the kept object unit at its raster position, then the sequence index

    with pytest.raises(ValueError, match="visual tokens in the sequence"):
        layout_positions(torch.tensor([short]), layout, ids)


@torch.no_grad()
def test_layout_positions_replace_the_sequential_ones_generate_passes(loaded, data):
    """generate passes sequential position ids in the prefill; the forward uses the layout's instead
    (same logits as passing none), and they differ from sequential ones (the test can fail)."""
    _, _, model = loaded
    ids, inputs = _inputs(loaded, data, "img0.png")
    sequential = torch.arange(ids.shape[1]).unsqueeze(0)
    layout = ImageLayout.unpack(inputs[LAYOUT_KEY])
    assert not torch.equal(family_of(model).positions(model, ids, layout), sequential)
    plain = model(input_ids=ids, **inputs).logits
    given = model(input_ids=ids, position_ids=sequential, **inputs).logits
    torch.testing.assert_close(given, plain, rtol=0, atol=0)
    packed = sequential.clone()
    packed[0, 5:] -= 5  # a second sample restarting at 0, as packing gives
    with pytest.raises(ValueError, match="packing"):
        model(input_ids=ids, position_ids=packed, **inputs)
    with pytest.raises(ValueError, match="4-D attention mask"):
        model(input_ids=ids, attention_mask=torch.ones(1, 1, ids.shape[1], ids.shape[1]), **inputs)
