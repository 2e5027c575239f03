"""Token budget (bgobj_patch_selection): entropy selection v1 / v2 / budget, for stock and bgobj layouts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bgobj_helpers import encode, load_for_inference, masked_dataset
from conftest import run_cli, train_yaml, write_yaml
from lf_ext.config import BgObjConfigError, parse_bgobj_args
from lf_ext.families import family_of
from lf_ext.layout import LAYOUT_KEY, Group, ImageLayout
from lf_ext.selection import PatchSelection, entropy, unit_histograms

U = 8  # unit side of the hand-made fixtures


def _units(levels: np.ndarray, seed: int = 0) -> np.ndarray:
    """(rows, cols, U, U, 3) units whose grey-level entropy is ``levels`` bits: 2**bits equal stripes of grey."""
    rows, cols = levels.shape
    out = np.zeros((rows, cols, U, U, 3), np.uint8)
    for r in range(rows):
        for c in range(cols):
            count = 2 ** int(levels[r, c])
            greys = (np.arange(count) * (256 // max(count, 2)) + 4).astype(np.uint8)  # distinct 32-bin histogram bins
            stripe = np.repeat(greys, U * U // count)[: U * U].reshape(U, U)
            out[r, c] = stripe[..., None]
    return out


def test_unit_entropy_of_the_fixtures():
    levels = np.array([[0, 1, 2, 3]])
    np.testing.assert_allclose(entropy(unit_histograms(_units(levels))), levels, atol=1e-9)


@pytest.mark.parametrize("alpha", [0.1, 0.3, 0.5, 1.0])
def test_budget_keeps_round_alpha_of_each_group(alpha):
    rng = np.random.default_rng(1)
    units = rng.integers(0, 256, (6, 8, U, U, 3), dtype=np.uint8)
    objects = np.zeros((6, 8), bool)
    objects[1:3, 2:5] = True  # 6 object units, 42 background units
    kept = PatchSelection("budget", alpha).select_grid(units, objects)
    assert int((kept & objects).sum()) == max(1, round(alpha * 6))
    assert int((kept & ~objects).sum()) == max(1, round(alpha * 42))


def test_budget_and_v2_follow_entropy_by_hand():
    levels = np.array([[0, 1, 2, 3], [3, 2, 1, 0]])
    units, none = _units(levels), np.zeros((2, 4), bool)
    # budget 0.25 of 8 units = 2: the two 3-bit units
    np.testing.assert_array_equal(PatchSelection("budget", 0.25).select_grid(units, none), levels == 3)
    # v2: threshold = alpha x max (3 bits); alpha 0.5 -> entropy >= 1.5 bits: the 2- and 3-bit units
    np.testing.assert_array_equal(PatchSelection("v2", 0.5).select_grid(units, none), levels >= 2)
    # inside groups: the object group's own maximum decides (its units are 0 and 1 bit: 1 >= 0.9 x 1)
    objects = np.array([[1, 1, 0, 0], [0, 0, 0, 0]], bool)
    kept = PatchSelection("v2", 0.9).select_grid(units, objects)
    np.testing.assert_array_equal(kept, np.array([[0, 1, 0, 1], [1, 0, 0, 0]], bool))


def test_v1_collapses_flat_blocks_by_hand():
    """Thresholds (3, 2): a 2x2 block below 3 bits keeps one unit (its highest-entropy one); a 4x4 block
    below 2 bits keeps one unit; detailed blocks keep every unit."""
    levels = np.full((4, 8), 4)
    levels[0:2, 0:2] = [[0, 1], [1, 0]]  # a flat 2x2 block (mixed histogram < 3 bits): keeps (0, 1)
    levels[:, 4:8] = 0  # a flat 4x4 block of one grey: keeps one unit
    units = _units(levels)
    units[:, 4:8] = 77
    kept = PatchSelection("v1", thresholds=(3.0, 2.0)).select_grid(units, np.zeros((4, 8), bool))
    expected = np.ones((4, 8), bool)
    expected[0:2, 0:2] = [[False, True], [False, False]]
    expected[:, 4:8] = False
    expected[0, 4] = True
    np.testing.assert_array_equal(kept, expected)


def test_bad_values_fail_before_training():
    for bad, message in (({"bgobj_patch_alpha": 0}, "in \\(0, 1\\]"), ({"bgobj_patch_alpha": 1.2}, "in \\(0, 1\\]"),
                         ({"bgobj_patch_selection": "v3"}, "not one of"),
                         ({"bgobj_patch_thresholds": "3"}, "two non-negative numbers")):  # fmt: skip
        with pytest.raises(BgObjConfigError, match=message):
            parse_bgobj_args(bad)


# ------------------------------------------------------------------------------------- in the models


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return masked_dataset(tmp_path_factory.mktemp("budget"), count=3)


def test_off_is_stock(tiny_dir, data):
    tok, template, model = load_for_inference(tiny_dir("qwen2_vl"), data, template="qwen2_vl")
    assert type(template.mm_plugin).__name__ == "Qwen2VLPlugin" and "bgobj" not in str(type(model.forward))
    assert not hasattr(model.forward, "_lf_ext_wrapped")


@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen2_5_vl"])
@torch.no_grad()
def test_stock_template_keeps_tokens_at_their_stock_positions(tiny_dir, data, arch):
    """The plain layout: round(0.3 x 48) = 14 tokens, each at the stock position of its unit; text after the
    image where stock text starts; the model encodes only the kept units."""
    tok, template, model = load_for_inference(tiny_dir(arch), data, template="qwen2_vl", bgobj_patch_selection="budget")
    _, stock_template, stock_model = load_for_inference(tiny_dir(arch), data, template="qwen2_vl")
    ids, inputs = encode(tok, template, [str(data / "img0.png")])
    stock_ids, stock_inputs = encode(tok, stock_template, [str(data / "img0.png")])
    layout = ImageLayout.unpack(inputs[LAYOUT_KEY])
    assert not layout.separated and layout.n_tokens(0) == 14 == int((ids == model.config.image_token_id).sum())
    family = family_of(model)
    positions = family.positions(model, ids, layout)
    stock_positions = family.stock_positions(stock_model, stock_ids, stock_inputs)
    image = model.config.image_token_id
    ours = positions[:, 0, ids[0] == image]
    theirs = stock_positions[:, 0, stock_ids[0] == image][:, layout.token_units(0)]
    assert torch.equal(ours, theirs)
    assert torch.equal(positions[:, 0, -3:], stock_positions[:, 0, -3:])  # the text after the image
    kept_features = family.encode(model, inputs["pixel_values"], layout)
    assert kept_features.shape[0] == 14
    model(input_ids=ids, **inputs)  # the forward reads the layout


@torch.no_grad()
def test_selection_keeps_background_independence_and_exact_hits(tiny_dir, data):
    from lf_ext.cache import BackgroundCache
    from lf_ext.inference.reuse import BackgroundReuse

    tok, template, model = load_for_inference(tiny_dir("qwen2_vl"), data, bgobj_patch_selection="budget", bgobj_patch_alpha=0.5)
    family = family_of(model)
    ids_a, a = encode(tok, template, [str(data / "img0.png")])
    ids_b, b = encode(tok, template, [str(data / "img1.png")])
    layout_a, layout_b = ImageLayout.unpack(a[LAYOUT_KEY]), ImageLayout.unpack(b[LAYOUT_KEY])
    background = ~layout_a.object_labels(0)
    assert torch.equal(layout_a.item_groups(0)[background], layout_b.item_groups(0)[background])  # same background choice
    assert layout_a.count(Group.DROPPED) > 0 and layout_a.count(Group.DROPPED_OBJECT) > 0
    n_bg = layout_a.n_background(0)
    assert torch.equal(family.encode(model, a["pixel_values"], layout_a)[:n_bg], family.encode(model, b["pixel_values"], layout_b)[:n_bg])
    out_a = model(input_ids=ids_a, output_hidden_states=True, **a)
    out_b = model(input_ids=ids_b, output_hidden_states=True, **b)
    bg_end = ids_a[0].tolist().index(tok["tokenizer"].convert_tokens_to_ids("[BG_END]"))
    assert torch.equal(out_a.hidden_states[-1][:, : bg_end + 1], out_b.hidden_states[-1][:, : bg_end + 1])

    from lf_ext.selection import PatchSelection as Selection

    reuse = BackgroundReuse(model, family, BackgroundCache(1 << 30), family.pixel_units(tok["processor"].image_processor),
                            selection=Selection("budget", 0.5))  # fmt: skip
    assert reuse.prefill(ids_a, a["pixel_values"], layout_a).outcome.kind == "miss"
    hit = reuse.prefill(ids_b, b["pixel_values"], layout_b)
    assert hit.outcome.kind == "hit" and torch.equal(hit.layout.groups, layout_b.groups)
    forward = model(input_ids=hit.input_ids, pixel_values=b["pixel_values"], bgobj_layout=hit.layout.pack())
    torch.testing.assert_close(hit.logits, forward.logits[:, -1].float(), rtol=0, atol=1e-5)


@torch.no_grad()
def test_llava_budget_576_to_173(tiny_dir, tmp_path):
    root = masked_dataset(tmp_path / "l", size=(336, 336), box=(112, 56, 196, 140), count=1)
    tok, template, model = load_for_inference(tiny_dir("llava"), root, template="llava", image_max_pixels=336 * 336,
                                              bgobj_patch_selection="budget")  # fmt: skip
    ids, inputs = encode(tok, template, [str(root / "img0.png")])
    assert int((ids == model.config.image_token_id).sum()) == round(0.3 * 576) == 173
    assert model(input_ids=ids, **inputs).logits.shape[1] == ids.shape[1]


@torch.no_grad()
def test_the_notes_processor_path_equals_the_plugin(tiny_dir, data):
    """``processor(images=..., images_kwargs={"patch_selection_method": "budget", "alpha": 0.3})``: the same kept
    units and logits as LLaMA-Factory's path."""
    from transformers import AutoModelForImageTextToText

    from lf_ext.processor import SelectingProcessor, enable_patch_selection

    path = tiny_dir("qwen2_vl")
    processor = SelectingProcessor.from_pretrained(path)
    image = Image.open(data / "img0.png").convert("RGB")
    text = "<|vision_start|><|image_pad|><|vision_end|>What color is the object?"
    inputs = processor(images=[image], text=[text], return_tensors="pt",
                       images_kwargs={"patch_selection_method": "budget", "alpha": 0.3})  # fmt: skip
    layout = ImageLayout.unpack(inputs[LAYOUT_KEY])
    tok, template, _ = load_for_inference(path, data, template="qwen2_vl", bgobj_patch_selection="budget",
                                          image_max_pixels=processor.image_processor.size["longest_edge"])  # fmt: skip
    _, plugin_inputs = encode(tok, template, [str(data / "img0.png")])
    assert torch.equal(layout.groups, ImageLayout.unpack(plugin_inputs[LAYOUT_KEY]).groups)
    model = enable_patch_selection(AutoModelForImageTextToText.from_pretrained(path).eval())
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 14
    generated = model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 2


@pytest.mark.integration
@pytest.mark.parametrize("method", ["v1", "v2", "budget"])
def test_llamafactory_train_and_chat_with_each_method(tmp_path, tiny_dir, scenes_dir, method):
    """A real ``llamafactory-cli train`` (bgobj template, the method on) and chat through ChatModel on its output."""
    from llamafactory.chat import ChatModel

    values = train_yaml(tiny_dir("qwen2_vl"), scenes_dir, tmp_path / "out", "qwen2_vl_bgobj", bgobj_mask_provider="dataset",
                        bgobj_patch_selection=method, bgobj_patch_alpha=0.5)  # fmt: skip
    values.update(max_steps=2, save_strategy="steps", save_steps=2)
    proc = run_cli(["llamafactory-cli", "train", str(write_yaml(tmp_path / "train.yaml", values))], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:]
    chat = ChatModel(dict(model_name_or_path=str(tmp_path / "out"), template="qwen2_vl_bgobj", infer_dtype="float32",
                          image_max_pixels=12544, max_new_tokens=3, do_sample=False, bgobj_patch_selection=method,
                          bgobj_patch_alpha=0.5, dataset_dir=str(scenes_dir), dataset="scenes_train",
                          bgobj_mask_provider="dataset"))  # fmt: skip
    image = next((scenes_dir / "images" / "train").glob("*.png"))
    first = chat.chat([{"role": "user", "content": "What color is the object?"}], images=[str(image)])[0].response_text
    again = chat.chat([{"role": "user", "content": "What color is the object?"}], images=[str(image)])[0].response_text
    assert first == again
    from lf_ext.inference.runtime import cache_stats

    assert cache_stats(chat.engine.model)["hits"] == 1


def test_random_and_uniform_baselines_keep_the_budget_count():
    import numpy as np

    from lf_ext.selection import PatchSelection

    rng = np.random.default_rng(1)
    units = rng.integers(0, 256, (6, 8, 4, 4, 3), dtype=np.uint8)
    members = np.zeros((6, 8), bool)
    members[1:5, 2:7] = True  # a 4x5 object group: 20 units
    for method in ("random", "uniform", "budget"):
        kept = PatchSelection(method, 0.3).select_grid(units, members)
        assert int(kept[members].sum()) == 6 and int(kept[~members].sum()) == round(0.3 * 28)  # per group
    uniform = PatchSelection("uniform", 0.25).keep(np.zeros((6, 8, 32)), np.ones((6, 8), bool))
    assert np.flatnonzero(uniform).tolist() == list(range(0, 48, 4))  # every 4th unit in row-major order
    again = PatchSelection("random", 0.3).select_grid(rng.integers(0, 256, units.shape, dtype=np.uint8), members)
    assert np.array_equal(again, PatchSelection("random", 0.3).select_grid(units, members))  # pixel-independent
    with pytest.raises(ValueError, match="random alpha must be in"):
        PatchSelection("random", 1.5)
