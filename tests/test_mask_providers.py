"""Mask providers on the scene images, the pipeline around them, and every bad mask input."""

import json

import numpy as np
import pytest
from PIL import Image

from lf_ext.config import BgObjConfigError, parse_bgobj_args
from lf_ext.masks.base import MaskError, MissingMaskError
from lf_ext.masks.dataset import MaskIndex
from lf_ext.masks.geometry import qwen2_vl_grid, unit_labels
from lf_ext.masks.pipeline import ObjectMasker, dilate
from lf_ext.masks.registry import build_mask_provider, mask_provider_names


def _record(scenes_dir, split="test", index=0):
    return json.loads((scenes_dir / f"scenes_{split}.json").read_text())[index]


def _truth_labels(scenes_dir, record, grid):
    mask = Image.open(scenes_dir / record["masks"][0])
    return unit_labels(np.asarray(grid.to_geometry(mask), np.float32) / 255, grid.unit)


def _masker(scenes_dir=None, **keys):
    context = {"lf_args": {"dataset_dir": str(scenes_dir), "dataset": "scenes_train,scenes_test"}} if scenes_dir else {}
    return ObjectMasker.from_settings(parse_bgobj_args(keys), **context)


def _labels(masker, scenes_dir, record, **extra):
    image = Image.open(scenes_dir / record["images"][0])
    grid = qwen2_vl_grid(*image.size, image_max_pixels=448 * 448)
    source = str(scenes_dir / record["images"][0])
    return masker.labels(image, grid, source=source, record=extra), _truth_labels(scenes_dir, record, grid)


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def test_builtin_providers_are_registered():
    assert {"none", "dataset", "entropy", "reference", "yolo"} <= set(mask_provider_names())
    with pytest.raises(ValueError, match="Valid: "):
        build_mask_provider("sam", parse_bgobj_args({}))


def test_none_gives_an_all_background_image(scenes_dir):
    labels, truth = _labels(_masker(), scenes_dir, _record(scenes_dir))
    assert labels.shape == truth.shape and not labels.any()


def test_dataset_masks_reproduce_ground_truth(scenes_dir):
    masker = _masker(scenes_dir, bgobj_mask_provider="dataset")
    for index in range(3):
        record = _record(scenes_dir, index=index)
        labels, truth = _labels(masker, scenes_dir, record)
        assert labels.any() and (labels == truth).all()


def test_dataset_boxes_and_polygons(scenes_dir):
    record = _record(scenes_dir)
    box = record["meta"]["objects"][0]["box"]
    masker = _masker(bgobj_mask_provider="dataset")
    by_box, truth = _labels(masker, scenes_dir, record, boxes=[box])
    x0, y0, x1, y1 = box
    by_polygon, _ = _labels(masker, scenes_dir, record, polygons=[[[x0, y0], [x1 - 1, y0], [x1 - 1, y1 - 1], [x0, y1 - 1]]])
    assert (by_box == by_polygon).all()
    assert _iou(by_box, truth) > 0.3


def test_reference_plate_recovers_the_object(scenes_dir):
    masker = _masker(bgobj_mask_provider="reference")
    record = _record(scenes_dir)
    labels, truth = _labels(masker, scenes_dir, record, plate=str(scenes_dir / record["meta"]["plate"]))
    assert _iou(labels, truth) > 0.8


def test_reference_without_plate_is_missing_then_fallback(scenes_dir):
    record = _record(scenes_dir)
    with pytest.raises(MissingMaskError, match="needs bgobj_reference_image"):
        _labels(_masker(bgobj_mask_provider="reference", bgobj_mask_fallback="error"), scenes_dir, record)
    masker = _masker(bgobj_mask_provider="reference", bgobj_mask_fallback="entropy")
    labels, _ = _labels(masker, scenes_dir, record)
    assert labels.any() and masker.fallbacks == 1


def test_entropy_budget_and_threshold(scenes_dir):
    record = _record(scenes_dir)
    labels, _ = _labels(_masker(bgobj_mask_provider="entropy", bgobj_entropy_alpha=0.2), scenes_dir, record)
    assert labels.sum() == round(0.2 * labels.size)
    flat = Image.new("RGB", (224, 224), (90, 90, 90))
    grid = qwen2_vl_grid(224, 224)
    assert not _masker(bgobj_mask_provider="entropy", bgobj_entropy_threshold=0.5).labels(flat, grid).any()


def test_margin_and_coverage():
    mask = np.zeros((56, 56), np.float32)
    mask[27, 27] = 1
    assert dilate(mask, 2)[25:30, 25:30].min() == 1 and dilate(mask, 2).sum() == 25
    assert unit_labels(dilate(mask, 1), 28).sum() == 4  # a grown pixel at a corner touches four units


def test_missing_mask_in_a_mixed_dataset(scenes_dir, tmp_path):
    image = Image.open(scenes_dir / _record(scenes_dir)["images"][0])
    grid = qwen2_vl_grid(*image.size)
    strict = _masker(bgobj_mask_provider="dataset", bgobj_mask_fallback="error")
    with pytest.raises(MissingMaskError, match="unlisted.png: no mask"):
        strict.labels(image, grid, source=str(tmp_path / "unlisted.png"))
    lenient = _masker(bgobj_mask_provider="dataset")  # documented default: fall back to 'none'
    assert not lenient.labels(image, grid, source=str(tmp_path / "unlisted.png")).any()


def test_bad_mask_files_name_the_sample(scenes_dir, tmp_path):
    image = Image.open(scenes_dir / _record(scenes_dir)["images"][0])
    grid = qwen2_vl_grid(*image.size)
    masker = _masker(bgobj_mask_provider="dataset", bgobj_mask_fallback="error")
    Image.new("L", (10, 10), 255).save(tmp_path / "small.png")
    (tmp_path / "corrupt.png").write_bytes(b"not a png")
    cases = {"mask file not found": tmp_path / "gone.png", "is 10x10, image is": tmp_path / "small.png",
             "not a readable image": tmp_path / "corrupt.png"}  # fmt: skip
    for message, path in cases.items():
        with pytest.raises(MaskError, match=message) as err:
            masker.labels(image, grid, source="sample_17.png", record={"mask": str(path)})
        assert "sample_17.png" in str(err.value)


def test_empty_full_and_tiny_images(scenes_dir):
    masker = _masker(bgobj_mask_provider="dataset")
    image = Image.new("RGB", (300, 200), (10, 20, 30))
    grid = qwen2_vl_grid(300, 200)
    assert not masker.labels(image, grid, record={"boxes": []}).any()  # empty mask: no object units
    assert masker.labels(image, grid, record={"boxes": [[0, 0, 300, 200]]}).all()  # full mask: no background
    tiny = Image.new("RGB", (5, 3))
    grid = qwen2_vl_grid(5, 3)
    labels = masker.labels(tiny, grid, record={"boxes": [[1, 1, 2, 2]]})
    assert grid.shape == (2, 3) and labels.shape == (2, 3)  # upscaled to at least 56x56 pixels
    assert 0 < labels.sum() < labels.size


def test_records_with_wrong_mask_count_are_rejected():
    with pytest.raises(MaskError, match="record 0: 'masks' has 1 entries for 2 images"):
        MaskIndex.from_records([{"images": ["a.png", "b.png"], "masks": ["a_mask.png"]}], "/data")


def test_an_image_in_several_records_gets_the_union_of_their_boxes():
    """GQA writes one record per question, each with the boxes of its own objects: the image's object is all of
    them (one split per image, so every question about it can share its cached background)."""
    records = [{"images": ["a.png"], "boxes": [[[0, 0, 10, 10]]]}, {"images": ["a.png"], "boxes": [[]]},
               {"images": ["a.png"], "boxes": [[[0, 0, 10, 10], [20, 20, 30, 30]]], "polygons": [[[[0, 0], [5, 0], [0, 5]]]]},
               {"images": ["b.png"], "boxes": [[]]}]  # fmt: skip
    index = MaskIndex.from_records(records, "/data")
    assert index.get("a.png") == {"boxes": [[0, 0, 10, 10], [20, 20, 30, 30]], "polygons": [[[0, 0], [5, 0], [0, 5]]]}
    assert index.get("b.png") == {"boxes": []}  # listed without objects: all background, not missing
    with pytest.raises(MaskError, match=r"dataset 'd' record 1: image a.png already has the mask /data/m1.png"):
        MaskIndex.from_records([{"images": ["a.png"], "masks": ["m1.png"]}, {"images": ["a.png"], "masks": ["m2.png"]}],
                               "/data", name="d")  # fmt: skip


def test_provider_keys_are_validated_before_training(tmp_path):
    with pytest.raises(BgObjConfigError, match="needs bgobj_yolo_weights.*not found: '/nowhere/best.pt'"):
        parse_bgobj_args({"bgobj_mask_provider": "yolo", "bgobj_yolo_weights": "/nowhere/best.pt"})
    with pytest.raises(BgObjConfigError, match="not one of"):
        parse_bgobj_args({"bgobj_mask_provider": "sam"})
    with pytest.raises(BgObjConfigError, match="bgobj_mask_dir not found"):
        parse_bgobj_args({"bgobj_mask_provider": "dataset", "bgobj_mask_dir": str(tmp_path / "none")})
    with pytest.raises(BgObjConfigError, match="bgobj_unit_coverage"):
        parse_bgobj_args({"bgobj_unit_coverage": 1.5})
