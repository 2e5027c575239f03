"""bgobj_sibling_prob: training images get a verified sibling's background, exactly as a cache hit serves it."""

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from bgobj_helpers import unit_labels
from conftest import run_cli, train_yaml, write_yaml
from lf_ext.config import Settings, parse_bgobj_args
from lf_ext.layout import SEPARATORS

MAX_PIXELS = 224 * 224  # no resize for the 224 px scenes and the 224x168 images below: 28-px units are exact
UNIT = 28


@pytest.fixture(scope="module")
def lf(tiny_dir):
    """Tokenizer module and template of the tiny Qwen2-VL as LLaMA-Factory loads them."""
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.hparams import get_infer_args
    from llamafactory.model import load_tokenizer

    model_args, data_args, _, _ = get_infer_args(dict(model_name_or_path=str(tiny_dir("qwen2_vl")), template="qwen2_vl_bgobj",
                                                      image_max_pixels=MAX_PIXELS, bgobj_mask_provider="dataset"))  # fmt: skip
    tokenizer_module = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    return tokenizer_module, template


def _train(lf, dataset_dir, dataset="scenes_train", seed=0, do_train=True, **bgobj):
    """The template's plugin bound to settings as ``llamafactory-cli train`` parses them (a fresh sampler,
    as in a new process)."""
    settings = Settings(parse_bgobj_args(dict(bgobj_mask_provider="dataset", **bgobj)),
                        dict(do_train=do_train, dataset=dataset, dataset_dir=str(dataset_dir), seed=seed))  # fmt: skip
    return lf[1].mm_plugin.bind(settings)


def _inputs(plugin, lf, path):
    return plugin._get_mm_inputs([str(path)], [], [], lf[0]["processor"])


def _scene_images(scenes_dir):
    return sorted({r["images"][0] for r in json.loads((scenes_dir / "scenes_train.json").read_text())})


def _unit_rows(labels: torch.Tensor) -> torch.Tensor:
    """Patch-row mask of the units where ``labels`` is True (4 patches per unit, consecutive)."""
    return labels.bool().repeat_interleave(4)


# ------------------------------------------------------------------------------- exact composite


@torch.no_grad()
def test_composite_is_a_cache_hit_bit_for_bit(lf, tiny_dir, scenes_dir):
    """prob 1 on the scenes: labels = NOT B (B = B_S minus X's object units); background tokens = the
    sibling's own encoding of B; object pixels = X's."""
    from transformers import AutoModelForImageTextToText

    from lf_ext.families.qwen.vision import encode_units
    from lf_ext.layout import LAYOUT_KEY, ImageLayout

    visual = AutoModelForImageTextToText.from_pretrained(tiny_dir("qwen2_vl")).model.visual.eval()
    images = [scenes_dir / name for name in _scene_images(scenes_dir)]
    plugin = _train(lf, scenes_dir, bgobj_sibling_prob=0.0)
    own = {str(p): _inputs(plugin, lf, p) for p in images}
    plugin = _train(lf, scenes_dir, bgobj_sibling_prob=1.0)
    served = 0
    for path in images:
        x = _inputs(plugin, lf, path)
        layout = ImageLayout.unpack(x[LAYOUT_KEY])
        sibling = plugin.siblings.sibling_of(str(path), layout.grids[0])
        if sibling is None:  # kept its own background: nothing changed
            assert torch.equal(x["pixel_values"], own[str(path)]["pixel_values"])
            assert torch.equal(unit_labels(x), unit_labels(own[str(path)]))
            continue
        served += 1
        s, x_own = own[sibling], own[str(path)]
        labels = unit_labels(x)
        assert torch.equal(labels, unit_labels(s) | unit_labels(x_own))  # object = NOT (B_S minus X's object)
        background = ~labels.bool()
        assert torch.equal(x["pixel_values"][_unit_rows(background)], s["pixel_values"][_unit_rows(background)])
        assert torch.equal(x["pixel_values"][_unit_rows(~background)], x_own["pixel_values"][_unit_rows(~background)])
        n_bg = int(background.sum())
        tokens_x = encode_units(visual, x["pixel_values"], layout)
        tokens_s = encode_units(visual, s["pixel_values"], layout)  # the sibling's entry without X's object
        assert torch.equal(tokens_x[:n_bg], tokens_s[:n_bg])  # bit for bit
    assert served >= 2, "the scenes should give some images a verified sibling"
    counts = plugin.siblings.counts
    assert counts["drawn"] == len(images) and counts["with_sibling"] == served


# ------------------------------------------------------------------------------------ verification


def _group(root, shift: int, grouped: bool = True):
    """Three 224x168 images on one plate: ``a`` (small object), ``b`` (larger object around a's) and ``c``
    (object in b's box; one background unit, row 0 col 7, brighter by ``shift``). Masks = the boxes."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    plate = rng.integers(20, 230, size=(168, 224, 3), dtype=np.uint8)
    boxes = {"a": (28, 28, 84, 84), "b": (28, 28, 140, 112), "c": (28, 28, 140, 112)}
    records = []
    for name, (x0, y0, x1, y1) in boxes.items():
        pixels = plate.copy()
        pixels[y0:y1, x0:x1] = rng.integers(0, 256, size=(y1 - y0, x1 - x0, 3), dtype=np.uint8)
        if name == "c":
            pixels[0:UNIT, 7 * UNIT : 8 * UNIT] += np.uint8(shift)
        mask = np.zeros((168, 224), np.uint8)
        mask[y0:y1, x0:x1] = 255
        Image.fromarray(pixels).save(root / f"{name}.png")
        Image.fromarray(mask).save(root / f"{name}_mask.png")
        meta = {"sibling_group": "train/plate"} if grouped else {}
        records.append({"messages": [{"role": "user", "content": "<image>What?"}, {"role": "assistant", "content": "x"}],
                        "images": [f"{name}.png"], "masks": [f"{name}_mask.png"], "meta": meta})  # fmt: skip
    (root / "data.json").write_text(json.dumps(records))
    (root / "dataset_info.json").write_text(json.dumps({"group": {"file_name": "data.json", "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}}}))  # fmt: skip
    return root


def _decisions(lf, root, seed=0, **bgobj):
    """Sibling chosen for a, b, c (by file stem), and their inputs, with prob 1 and a fresh sampler."""
    plugin = _train(lf, root, dataset="group", seed=seed, bgobj_sibling_prob=1.0, **bgobj)
    inputs = {name: _inputs(plugin, lf, root / f"{name}.png") for name in "abc"}
    chosen = {}
    for name, x in inputs.items():
        sibling = plugin.siblings.sibling_of(str(root / f"{name}.png"), (1, 6, 8))
        chosen[name] = sibling and sibling.rsplit("/", 1)[-1][:-4]
    return chosen, inputs


@pytest.mark.parametrize("seed", [0, 1])
def test_a_background_beyond_the_threshold_is_never_used(lf, tmp_path, seed):
    for grouped in (True, False):  # from the sibling group, and found by fingerprint among earlier images
        root = _group(tmp_path / f"group_{grouped}", shift=8, grouped=grouped)
        chosen, inputs = _decisions(lf, root, seed, bgobj_cache_unit_threshold=4.0)
        if grouped:
            # a and b serve each other (each without the other's object); c's background is 8 off on one unit
            assert chosen == {"a": "b", "b": "a", "c": None}
        else:
            assert chosen == {"a": None, "b": "a", "c": None}  # only earlier same-size images; c is 8 off
        plugin = _train(lf, root, dataset="group", bgobj_sibling_prob=0.0)
        for name in "bc":
            assert torch.equal(inputs[name]["pixel_values"], _inputs(plugin, lf, root / f"{name}.png")["pixel_values"])
    # a looser threshold lets c use b's background (found by fingerprint: b is before c in dataset order)
    chosen, inputs = _decisions(lf, root, seed, bgobj_cache_unit_threshold=9.0)
    assert chosen["c"] == "b"
    plugin = _train(lf, root, dataset="group", bgobj_sibling_prob=0.0)
    b, c_own = (_inputs(plugin, lf, root / f"{n}.png") for n in "bc")
    corner = torch.zeros(6, 8, dtype=torch.bool)
    corner[0, 7] = True
    rows = _unit_rows(corner.reshape(-1))
    assert torch.equal(inputs["c"]["pixel_values"][rows], b["pixel_values"][rows])
    assert not torch.equal(inputs["c"]["pixel_values"][rows], c_own["pixel_values"][rows])


def test_small_backgrounds_are_not_served(lf, tmp_path):
    """A sibling whose background covers less than bgobj_cache_min_coverage would never be cached."""
    root = _group(tmp_path / "group", shift=0)
    chosen, _ = _decisions(lf, root, bgobj_cache_min_coverage=0.9)  # b's and c's: 36 of 48 units
    assert chosen["a"] is None


# ---------------------------------------------------------------------------------- off, and chat


def test_off_and_outside_training_change_nothing(lf, scenes_dir, monkeypatch):
    images = [scenes_dir / name for name in _scene_images(scenes_dir)]
    plugin = _train(lf, scenes_dir, bgobj_sibling_prob=1.0)
    with monkeypatch.context() as patch:  # the plugin as it was before siblings existed
        patch.setattr(plugin.siblings, "enabled", lambda: False)
        stock = [_inputs(plugin, lf, p) for p in images]
    off = [_inputs(_train(lf, scenes_dir, bgobj_sibling_prob=0.0), lf, p) for p in images]
    chat_plugin = _train(lf, scenes_dir, do_train=False, bgobj_sibling_prob=1.0)  # chat/api: no do_train
    chat = [_inputs(chat_plugin, lf, p) for p in images]
    for runs in zip(stock, off, chat):
        for other in runs[1:]:
            assert other.keys() == runs[0].keys()
            assert all(torch.equal(other[k], runs[0][k]) for k in runs[0] if isinstance(runs[0][k], torch.Tensor))
    assert chat_plugin.siblings.counts["drawn"] == 0 and chat_plugin.siblings._index is None


# ---------------------------------------------------------------------------- the two calls agree


def _layout_counts(ids, tokenizer):
    start, end, obj_start, obj_end = (ids.index(i) for i in tokenizer.convert_tokens_to_ids(list(SEPARATORS)))
    return end - start - 1, obj_end - obj_start - 1


@pytest.mark.parametrize("prob", [0.5, 1.0])
def test_token_counts_and_tensors_agree_across_calls_and_processes(lf, scenes_dir, prob):
    """process_messages (dataset preprocessing) and get_mm_inputs (collator), in other orders and fresh processes."""
    tokenizer_module, template = lf
    tokenizer, processor = tokenizer_module["tokenizer"], tokenizer_module["processor"]
    images = [str(scenes_dir / name) for name in _scene_images(scenes_dir)]
    plugin = _train(lf, scenes_dir, bgobj_sibling_prob=prob)
    counts = {}
    for path in images:
        messages = plugin.process_messages([{"role": "user", "content": "<image>Q"}, {"role": "assistant", "content": "A"}],
                                           [path], [], [], processor)  # fmt: skip
        ids, _ = template.encode_oneturn(tokenizer, messages)
        counts[path] = _layout_counts(ids, tokenizer)
    first, drawn = dict(plugin.siblings._memo), plugin.siblings.counts["drawn"]
    if prob < 1:
        assert 0 < drawn < len(images)  # a pure function of each path: some images are drawn, not all
    else:
        assert drawn == len(images) and sum(s is not None for s in first.values()) > 0
    plugin = plugin.bind(plugin.settings)  # the collator runs in another process, in another order
    for path in reversed(images):
        labels = unit_labels(plugin.get_mm_inputs([path], [], [], [1], [0], [0], [[]], processor))
        assert (int((labels == 0).sum()), int(labels.sum())) == counts[path]
    assert dict(plugin.siblings._memo) == first and plugin.siblings.counts["drawn"] == drawn


@pytest.mark.integration
def test_llamafactory_train_with_siblings(tmp_path, tiny_dir, scenes_dir):
    """One short ``llamafactory-cli train`` with prob 1: token counts match the tensors, the log counts siblings."""
    values = train_yaml(tiny_dir("qwen2_vl"), scenes_dir, tmp_path / "out", "qwen2_vl_bgobj",
                        bgobj_mask_provider="dataset", bgobj_sibling_prob=1.0)  # fmt: skip
    values.update(image_max_pixels=MAX_PIXELS, max_samples=None, max_steps=2, per_device_train_batch_size=4)
    proc = run_cli(["llamafactory-cli", "train", str(write_yaml(tmp_path / "train.yaml", values))], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:]
    found = re.search(r"bgobj_sibling_prob: (\d+) images drawn, (\d+) served a sibling's background, (\d+) kept", proc.stdout)
    assert found, proc.stdout[-4000:]
    drawn, served, kept = map(int, found.groups())
    assert drawn == served + kept and served > 0
