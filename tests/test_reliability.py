"""Reliability: cache-independent answers (policy 'exact'), weights that cannot go stale, per-request
outcomes under concurrency, and bad input named or routed instead of crashing."""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lf_ext.masks.base import MaskError

QUESTION = "What color is the object?"
BOXES = {"one": (28, 28, 56, 56), "two": (28, 28, 84, 56), "four": (28, 28, 84, 84), "six": (28, 28, 112, 84)}
OBJECT_UNITS = {"one": 1, "two": 2, "four": 4, "six": 6}


def sized_dataset(root: Path) -> Path:
    """Four 224x168 images on one textured plate, objects of 1, 2, 4 and 6 units (masks = the boxes):
    an outcome's unit counts tell which image it belongs to."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    plate = rng.integers(0, 256, size=(168, 224, 3), dtype=np.uint8)
    Image.fromarray(plate).save(root / "plate.png")
    records = []
    for name, (x0, y0, x1, y1) in BOXES.items():
        pixels, mask = plate.copy(), np.zeros((168, 224), np.uint8)
        pixels[y0:y1, x0:x1] = rng.integers(0, 256, size=(y1 - y0, x1 - x0, 3), dtype=np.uint8)
        mask[y0:y1, x0:x1] = 255
        Image.fromarray(pixels).save(root / f"{name}.png")
        Image.fromarray(mask).save(root / f"{name}_mask.png")
        records.append({"messages": [{"role": "user", "content": f"<image>{QUESTION}"}, {"role": "assistant", "content": "red"}],
                        "images": [f"{name}.png"], "masks": [f"{name}_mask.png"]})  # fmt: skip
    (root / "data.json").write_text(json.dumps(records))
    (root / "dataset_info.json").write_text(json.dumps({"sized": {"file_name": "data.json", "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}}}))  # fmt: skip
    return root


def chat_args(model_dir: Path, data: Path, **extra) -> dict:
    return dict(model_name_or_path=str(model_dir), template="qwen2_vl_bgobj", infer_dtype="float32", image_max_pixels=50176,
                max_new_tokens=4, do_sample=False, dataset_dir=str(data), dataset="sized", bgobj_mask_provider="dataset",
                bgobj_mask_fallback="error", **extra)  # fmt: skip


@pytest.fixture(scope="module")
def sized(tmp_path_factory) -> Path:
    return sized_dataset(tmp_path_factory.mktemp("sized"))


@pytest.fixture(scope="module")
def cache_off_answers(tiny_dir, sized) -> dict[str, str]:
    from llamafactory.chat import ChatModel

    plain = ChatModel(chat_args(tiny_dir("qwen2_vl"), sized, bgobj_cache=False))
    return {name: plain.chat([{"role": "user", "content": QUESTION}], images=[str(sized / f"{name}.png")])[0].response_text
            for name in BOXES}  # fmt: skip


# ------------------------------------------------------------------------------- 1: exact policy


def test_exact_policy_answers_equal_cache_off(tiny_dir, sized, cache_off_answers):
    from lf_ext.inference.stream import FrameStream

    stream = FrameStream(chat_args(tiny_dir("qwen2_vl"), sized, bgobj_cache_policy="exact"))
    kinds = []
    for name in list(BOXES) * 2:
        answer = stream.ask(sized / f"{name}.png", QUESTION)
        assert answer.text == cache_off_answers[name], name
        assert answer.outcome.object_units == OBJECT_UNITS[name]  # always the request's own split
        kinds.append(answer.outcome.kind)
    assert kinds == ["miss"] * 4 + ["hit"] * 4


# ------------------------------------------------------------------------------- 5: concurrency


def test_frame_stream_under_concurrency_keeps_outcomes_with_their_requests(tiny_dir, sized, cache_off_answers, monkeypatch):
    """8 threads x 50 requests, MAX_CONCURRENT=4, two policies' worth of splits: zero exceptions, every
    answer equals cache-off, every outcome is its own request's (its unit counts name the image)."""
    from lf_ext.inference.stream import FrameStream

    monkeypatch.setenv("MAX_CONCURRENT", "4")
    stream = FrameStream(chat_args(tiny_dir("qwen2_vl"), sized, bgobj_cache_policy="exact"))
    names = list(BOXES)
    results, errors = [], []

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(50):
            name = names[int(rng.integers(len(names)))]
            try:
                answer = stream.ask(sized / f"{name}.png", QUESTION)
                results.append((name, answer))
            except Exception as err:  # noqa: BLE001 - the test counts every failure
                errors.append(repr(err))

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not errors, errors[:3]
    assert len(results) == 400
    for name, answer in results:
        assert answer.text == cache_off_answers[name]
        assert answer.outcome is not None and answer.outcome.object_units == OBJECT_UNITS[name], (name, answer.outcome)
        assert answer.outcome.background_units == 48 - OBJECT_UNITS[name]
    kinds = Counter(answer.outcome.kind for _, answer in results)
    assert kinds["hit"] >= 400 - 4 * 8 and stream.stats()["lookups"] == 400


# ------------------------------------------------------------------------------- 2: stale weights


def test_changed_weights_never_serve_old_disk_entries(tiny_dir, sized, tmp_path):
    """Weights changed in place in the model folder (a tensor no sample of rows would see): the disk
    tier written under the old weights is dropped at start, never served."""
    import shutil

    from safetensors.torch import load_file, save_file

    from lf_ext.inference.stream import FrameStream

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_dir("qwen2_vl"), model_dir)
    args = chat_args(model_dir, sized, bgobj_cache_dir=str(tmp_path / "disk"), bgobj_cache_max_mb=0.15)
    first = FrameStream(args)
    for name in BOXES:
        first.ask(sized / f"{name}.png", QUESTION)
    assert first.stats()["disk_entries"] >= 2
    again = FrameStream(args)  # same weights: the disk tier serves
    assert again.ask(sized / "one.png", QUESTION).outcome.kind == "hit" and again.stats()["disk_hits"] == 1

    weights = load_file(model_dir / "model.safetensors")
    name = next(k for k in weights if "layers.1.mlp.down_proj" in k)
    weights[name] = weights[name] + 0.01  # deep in the LLM: the old sampled fingerprint never looked there
    save_file(weights, model_dir / "model.safetensors", metadata={"format": "pt"})
    changed = FrameStream(args)
    stats = changed.stats()
    assert stats["disk_stale"] >= 2 and stats["disk_entries"] == 0
    assert changed.ask(sized / "one.png", QUESTION).outcome.kind == "miss" and changed.stats()["disk_hits"] == 0


# ------------------------------------------------------------------------------- 3, 4: boxes and masks


def _render(spec: dict, size=(40, 30)):
    from lf_ext.masks.spec import MaskQuality, render_spec

    quality = MaskQuality()
    return np.asarray(render_spec(spec, size, "/data/img.png", quality)), quality


@pytest.mark.parametrize("box, message", [([30, 10, 5, 20], "empty or inverted"), ([1, 2, 3], "four numbers"),
                                          ([50, 40, 60, 50], "entirely outside the 40x30 image"),
                                          (["a", 0, 5, 5], "four numbers")])  # fmt: skip
def test_bad_boxes_name_the_sample(box, message):
    with pytest.raises(MaskError, match=f"/data/img.png: box 0 .*{message}"):
        _render({"boxes": [box]})


def test_boxes_are_clipped_and_polygons_checked():
    mask, _ = _render({"boxes": [[-10, -10, 5, 4]]})
    assert mask[:4, :5].all() and mask.sum() == 20 * 255
    with pytest.raises(MaskError, match="polygon 0 must be a list of at least three"):
        _render({"polygons": [[[0, 0], [5, 5]]]})
    with pytest.raises(MaskError, match="polygon 0 lies entirely outside"):
        _render({"polygons": [[[100, 100], [120, 100], [110, 120]]]})


def test_mask_semantics_alpha_threshold_and_warnings(tmp_path, caplog):
    object_area = np.zeros((30, 40), bool)
    object_area[5:15, 10:30] = True
    # an RGBA cut-out: black pixels everywhere, the object only in the alpha channel
    rgba = np.zeros((30, 40, 4), np.uint8)
    rgba[..., 3] = object_area * 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cutout.png")
    mask, _ = _render({"mask": str(tmp_path / "cutout.png")})
    np.testing.assert_array_equal(mask > 0, object_area)
    # JPEG-style noise: background 0..12, object 243..255: binarised at 128, not "nonzero"
    rng = np.random.default_rng(0)
    noisy = np.where(object_area, 255 - rng.integers(0, 13, object_area.shape), rng.integers(0, 13, object_area.shape))
    Image.fromarray(noisy.astype(np.uint8)).save(tmp_path / "noisy.png")
    mask, quality = _render({"mask": str(tmp_path / "noisy.png")})
    np.testing.assert_array_equal(mask > 0, object_area)
    assert quality.soft == 0  # noise near 0 and 255 is still a binary mask
    # soft edges on 5 % of the pixels: binarised, warned and counted
    soft = (object_area * 255).astype(np.uint8)
    soft[0:2, :30] = 100
    Image.fromarray(soft).save(tmp_path / "soft.png")
    mask, quality = _render({"mask": str(tmp_path / "soft.png")})
    assert quality.soft == 1 and not mask[0, 0]
    # unusable: a colour picture, or a mostly mid-grey one
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(tmp_path / "photo.png")
    with pytest.raises(MaskError, match="photo.png is a colour image, not a mask"):
        _render({"mask": str(tmp_path / "photo.png")})
    Image.fromarray(np.full((30, 40), 128, np.uint8)).save(tmp_path / "grey.png")
    with pytest.raises(MaskError, match="grey.png is mostly mid-grey"):
        _render({"mask": str(tmp_path / "grey.png")})


# ------------------------------------------------------------------------------- 7: training errors


def test_training_errors_name_the_record_and_the_resolved_path(tiny_dir, tmp_path, monkeypatch):
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.hparams import get_infer_args
    from llamafactory.model import load_tokenizer

    from lf_ext.config import Settings, parse_bgobj_args

    monkeypatch.chdir(tmp_path)
    data = sized_dataset(tmp_path / "ds")
    (data / "four_mask.png").unlink()  # record 2's mask file is gone
    model_args, data_args, _, _ = get_infer_args(dict(model_name_or_path=str(tiny_dir("qwen2_vl")), template="qwen2_vl_bgobj"))
    tokenizer_module = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    settings = Settings(parse_bgobj_args({"bgobj_mask_provider": "dataset", "bgobj_mask_fallback": "error"}),
                        {"do_train": True, "dataset": "sized", "dataset_dir": "ds"})  # fmt: skip
    plugin = template.mm_plugin.bind(settings)
    with pytest.raises(MaskError) as caught:
        plugin._get_mm_inputs(["ds/four.png"], [], [], tokenizer_module["processor"])  # the path as LF resolves it
    message = str(caught.value)
    assert message.startswith("dataset 'sized' record 2 (data.json), image 1 of 1: ")
    assert str(data / "four_mask.png") in message and "mask file not found" in message
