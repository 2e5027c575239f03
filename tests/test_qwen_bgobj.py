"""qwen2_vl_bgobj on tiny Qwen2-VL and Qwen2.5-VL: layout, positions, background independence, generate."""

import pytest
import torch

from bgobj_helpers import encode, load_for_inference, masked_dataset, unit_labels
from lf_ext.layout import SEPARATORS

ARCHS = ["qwen2_vl", "qwen2_5_vl"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return masked_dataset(tmp_path_factory.mktemp("masked"))


def _forward(model, input_ids, inputs, hidden=True):
    mm_types = (input_ids == model.config.image_token_id).long()
    positions, _ = model.model.get_rope_index(input_ids, mm_token_type_ids=mm_types, image_grid_thw=inputs["image_grid_thw"],
                                              bgobj_layout=inputs["bgobj_layout"])  # fmt: skip
    with torch.no_grad():
        return model(input_ids=input_ids, position_ids=positions, output_hidden_states=hidden, **inputs), positions


@pytest.mark.parametrize("arch", ARCHS)
def test_layout_and_counts(tiny_dir, data, arch):
    tok, template, model = load_for_inference(tiny_dir(arch), data)
    input_ids, inputs = encode(tok, template, [str(data / "img0.png")])
    ids = tok["tokenizer"].convert_tokens_to_ids(list(SEPARATORS))
    row = input_ids[0].tolist()
    bg_start, bg_end, obj_start, obj_end = (row.index(i) for i in ids)
    labels = unit_labels(inputs)
    assert bg_end - bg_start - 1 == int((labels == 0).sum()) and obj_end - obj_start - 1 == int(labels.sum())
    assert obj_start == bg_end + 1 and 0 < int(labels.sum()) < labels.numel()
    # the mask box (112..196 x 56..140 on 224x168) covers these 28-px units exactly
    grid = inputs["image_grid_thw"][0].tolist()
    units = labels.view(grid[1] // 2, grid[2] // 2)
    assert units[2:5, 4:7].all() and int(units.sum()) == 9


@pytest.mark.parametrize("arch", ARCHS)
def test_background_prefix_ignores_object_pixels(tiny_dir, data, arch):
    tok, template, model = load_for_inference(tiny_dir(arch), data)
    ids_a, inputs_a = encode(tok, template, [str(data / "img0.png")])
    ids_b, inputs_b = encode(tok, template, [str(data / "img1.png")])  # same background, other object pixels
    assert torch.equal(ids_a, ids_b) and not torch.equal(inputs_a["pixel_values"], inputs_b["pixel_values"])
    out_a, pos_a = _forward(model, ids_a, inputs_a)
    out_b, pos_b = _forward(model, ids_b, inputs_b)
    assert torch.equal(pos_a, pos_b)
    bg_end = ids_a[0].tolist().index(tok["tokenizer"].convert_tokens_to_ids("[BG_END]"))
    for layer_a, layer_b in zip(out_a.hidden_states, out_b.hidden_states):
        assert torch.equal(layer_a[:, : bg_end + 1], layer_b[:, : bg_end + 1])
    assert not torch.allclose(out_a.hidden_states[-1][:, bg_end + 1 :], out_b.hidden_states[-1][:, bg_end + 1 :])


@pytest.mark.parametrize("arch", ARCHS)
def test_positions_keep_each_unit_where_stock_puts_it(tiny_dir, data, arch):
    tok, template, model = load_for_inference(tiny_dir(arch), data)
    input_ids, inputs = encode(tok, template, [str(data / "img0.png")])
    _, positions = _forward(model, input_ids, inputs, hidden=False)
    grid = inputs["image_grid_thw"][0].tolist()
    rows, cols = grid[1] // 2, grid[2] // 2
    row = input_ids[0].tolist()
    sep = dict(zip(SEPARATORS, tok["tokenizer"].convert_tokens_to_ids(list(SEPARATORS))))
    start = int(positions[0, 0, row.index(sep["[BG_START]"])]) + 1
    labels = unit_labels(inputs).view(rows, cols)
    image_at = [i for i, t in enumerate(row) if t == model.config.image_token_id]
    expected = [(r, c) for r in range(rows) for c in range(cols) if not labels[r, c]]
    expected += [(r, c) for r in range(rows) for c in range(cols) if labels[r, c]]
    for index, (r, c) in zip(image_at, expected):
        assert positions[:, 0, index].tolist() == [start, start + r, start + c]
    assert int(positions[0, 0, row.index(sep["[BG_END]"])]) == start + max(rows, cols)


def test_generate_uses_the_training_positions(tiny_dir, data):
    """``generate`` (as in chat/api) must give the first token the logits of the training-style forward."""
    tok, template, model = load_for_inference(tiny_dir("qwen2_vl"), data)
    input_ids, inputs = encode(tok, template, [str(data / "img0.png")])
    out, _ = _forward(model, input_ids, inputs, hidden=False)
    gen_inputs = dict(inputs, mm_token_type_ids=(input_ids == model.config.image_token_id).long())
    generated = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=1,
                               do_sample=False, output_logits=True, return_dict_in_generate=True, **gen_inputs)  # fmt: skip
    torch.testing.assert_close(generated.logits[0][0], out.logits[0, -1], rtol=0, atol=1e-5)


def test_stock_template_on_the_same_model_is_untouched(tiny_dir, data):
    tok, template, model = load_for_inference(tiny_dir("qwen2_vl"), data, template="qwen2_vl")
    assert getattr(model.config.vision_config, "bgobj", None) is None and not hasattr(model.model.visual, "bgobj")
    assert "[BG_START]" not in tok["tokenizer"].get_vocab()


@pytest.mark.parametrize("arch", ARCHS)
def test_prefusion_starts_as_identity_and_keeps_the_prefix_cacheable(tiny_dir, data, arch):
    tok, template, plain = load_for_inference(tiny_dir(arch), data)
    _, _, fused = load_for_inference(tiny_dir(arch), data, bgobj_prefusion_layers=2)
    prefusion = fused.model.visual.bgobj.prefusion
    assert len(prefusion.layers) == 2 and torch.equal(prefusion.gates, torch.zeros(2))
    llm_layer = fused.model.language_model.layers[1].self_attn.q_proj.weight
    assert torch.equal(prefusion.layers[1].self_attn.q_proj.weight, llm_layer)  # a copy of the LLM's layer 1
    ids_a, inputs_a = encode(tok, template, [str(data / "img0.png")])
    torch.testing.assert_close(_forward(fused, ids_a, inputs_a)[0].logits, _forward(plain, ids_a, inputs_a)[0].logits,
                               rtol=0, atol=1e-6)  # fmt: skip
    with torch.no_grad():
        prefusion.gates.fill_(0.7)  # as after training: the layers now change the sequence
    ids_b, inputs_b = encode(tok, template, [str(data / "img1.png")])
    out_a, _ = _forward(fused, ids_a, inputs_a)
    out_b, _ = _forward(fused, ids_b, inputs_b)
    assert not torch.allclose(out_a.logits, _forward(plain, ids_a, inputs_a)[0].logits)
    bg_end = ids_a[0].tolist().index(tok["tokenizer"].convert_tokens_to_ids("[BG_END]"))
    assert torch.equal(out_a.hidden_states[-1][:, : bg_end + 1], out_b.hidden_states[-1][:, : bg_end + 1])


def test_prefusion_kv_cache_matches_full_recompute(tiny_dir, data):
    """Greedy decoding with the prefusion cache gives the logits of recomputing the whole sequence."""
    tok, template, model = load_for_inference(tiny_dir("qwen2_vl"), data, bgobj_prefusion_layers=1)
    with torch.no_grad():
        model.model.visual.bgobj.prefusion.gates.fill_(0.7)
    input_ids, inputs = encode(tok, template, [str(data / "img0.png")])
    gen_inputs = dict(inputs, mm_token_type_ids=(input_ids == model.config.image_token_id).long())
    generated = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=3,
                               do_sample=False, output_logits=True, return_dict_in_generate=True, **gen_inputs)  # fmt: skip
    full = generated.sequences[:, :-1]
    mm_types = (full == model.config.image_token_id).long()
    positions, _ = model.model.get_rope_index(full, mm_token_type_ids=mm_types, image_grid_thw=inputs["image_grid_thw"],
                                              bgobj_layout=inputs["bgobj_layout"])  # fmt: skip
    with torch.no_grad():
        logits = model(input_ids=full, position_ids=positions, use_cache=False, **inputs).logits
    for step, step_logits in enumerate(generated.logits):
        torch.testing.assert_close(step_logits[0], logits[0, input_ids.shape[1] - 1 + step], rtol=0, atol=1e-4)


def test_split_projector_starts_as_the_merger_and_separates_groups(tiny_dir, data):
    tok, template, plain = load_for_inference(tiny_dir("qwen2_5_vl"), data)
    _, _, split = load_for_inference(tiny_dir("qwen2_5_vl"), data, bgobj_split_projector=True)
    modules = split.model.visual.bgobj
    assert torch.equal(modules.merger_object.mlp[0].weight, split.model.visual.merger.mlp[0].weight)
    ids_a, inputs_a = encode(tok, template, [str(data / "img0.png")])
    torch.testing.assert_close(_forward(split, ids_a, inputs_a)[0].logits, _forward(plain, ids_a, inputs_a)[0].logits,
                               rtol=0, atol=1e-6)  # fmt: skip
    with torch.no_grad():
        modules.merger_object.mlp[0].weight.mul_(1.5)  # train only the object projector
    changed, _ = _forward(split, ids_a, inputs_a)
    reference, _ = _forward(plain, ids_a, inputs_a)
    bg_end = ids_a[0].tolist().index(tok["tokenizer"].convert_tokens_to_ids("[BG_END]"))
    assert torch.equal(changed.hidden_states[-1][:, : bg_end + 1], reference.hidden_states[-1][:, : bg_end + 1])
    assert not torch.allclose(changed.hidden_states[-1][:, bg_end + 1 :], reference.hidden_states[-1][:, bg_end + 1 :])


def test_plugin_bad_images_name_the_sample(tiny_dir, data, tmp_path):
    from lf_ext.masks.base import MaskError

    tok, template, _ = load_for_inference(tiny_dir("qwen2_vl"), data)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    for path, message in ((tmp_path / "broken.png", "broken.png"), (tmp_path / "absent.png", "absent.png")):
        with pytest.raises(MaskError, match=f"request, image 1 of 1: .*{message}: cannot be read"):
            encode(tok, template, [str(path)])


@pytest.mark.parametrize("size", [(1000, 20), (20, 1000), (10, 10), (5000, 5)])
def test_plugin_extreme_sizes_match_the_processor(tiny_dir, data, tmp_path, size):
    from PIL import Image

    tok, template, model = load_for_inference(tiny_dir("qwen2_vl"), data, bgobj_mask_fallback="none")
    Image.new("RGB", size, (40, 90, 200)).save(tmp_path / "odd.png")
    input_ids, inputs = encode(tok, template, [str(tmp_path / "odd.png")])
    t, h, w = inputs["image_grid_thw"][0].tolist()
    assert unit_labels(inputs).numel() == h * w // 4 == int((input_ids == model.config.image_token_id).sum())
    assert not unit_labels(inputs).any()  # no mask for this image: the 'none' fallback asked for
