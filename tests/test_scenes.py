"""Tests for the synthetic shared-background scene generator (lf_ext.scenes)."""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lf_ext.scenes import generate_scenes
from lf_ext.scenes.dataset import COVERAGE_RANGE, position_label
from lf_ext.scenes.objects import OBJECT_KINDS, PALETTE

PARAMS = dict(num_backgrounds=4, images_per_background=4, image_size=(224, 224), seed=3, progress=False)
SPLITS = ("train", "test")


def _load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict[str, list[dict]]]:
    out = tmp_path_factory.mktemp("scenes")
    summary = generate_scenes(out, **PARAMS)
    records = {s: json.loads((out / f"scenes_{s}.json").read_text()) for s in SPLITS}
    return out, summary, records


def _images(records: dict[str, list[dict]]) -> dict[str, dict]:
    """One record per image path (they share meta)."""
    return {r["images"][0]: r for s in SPLITS for r in records[s]}


def test_layout_and_summary(scenes):
    out, summary, records = scenes
    assert summary["num_backgrounds"] == 4
    assert sorted(p.name for p in (out / "plates").iterdir()) == sorted(f"{b}.png" for b in summary["background_ids"])
    assert {b.split("_")[0] for b in summary["background_ids"]} == {"room", "desk", "screen"}
    n_images = 0
    for split in SPLITS:
        imgs = sorted(p.name for p in (out / "images" / split).glob("*.png"))
        assert imgs == sorted(p.name for p in (out / "masks" / split).glob("*.png"))
        assert summary["splits"][split]["images"] == len(imgs) > 0
        assert summary["splits"][split]["records"] == len(records[split])
        n_images += len(imgs)
    assert n_images == 16
    readme = (out / "README.md").read_text()
    assert "single-channel 8-bit png" in readme.lower().replace("\n", " ")
    for rec in _images(records).values():
        for rel in rec["images"] + rec["masks"] + [rec["meta"]["plate"]]:
            assert not Path(rel).is_absolute() and (out / rel).is_file()


def test_dataset_info_and_record_schema(scenes):
    out, _, records = scenes
    info = json.loads((out / "dataset_info.json").read_text())
    assert set(info) == {"scenes_train", "scenes_test"}
    for split in SPLITS:
        entry = info[f"scenes_{split}"]
        assert entry["formatting"] == "sharegpt" and (out / entry["file_name"]).is_file()
        assert entry["columns"] == {"messages": "messages", "images": "images"}
        assert entry["tags"] == {"role_tag": "role", "content_tag": "content",
                                 "user_tag": "user", "assistant_tag": "assistant"}
        for rec in records[split]:
            user, assistant = rec["messages"]
            assert (user["role"], assistant["role"]) == ("user", "assistant")
            assert user["content"].startswith("<image>") and user["content"].count("<image>") == 1
            assert user["content"].endswith("Answer with one word or number.")
            assert len(rec["images"]) == len(rec["masks"]) == 1
            assert rec["images"][0].startswith(f"images/{split}/") and rec["masks"][0].startswith(f"masks/{split}/")
            meta = rec["meta"]
            assert meta["sibling_group"] == f"{split}/{meta['background_id']}"
            assert meta["plate"] == f"plates/{meta['background_id']}.png"
            assert meta["background_id"].startswith(meta["background_kind"] + "_")


def test_masks_are_exact(scenes):
    out, _, records = scenes
    for rel, rec in _images(records).items():
        image, mask = _load(out / rel), _load(out / rec["masks"][0])
        plate = _load(out / rec["meta"]["plate"])
        assert Image.open(out / rec["masks"][0]).mode == "L"
        assert mask.shape == image.shape[:2] == plate.shape[:2]
        assert set(np.unique(mask).tolist()) <= {0, 255}
        obj = mask > 0
        assert np.array_equal(image[~obj], plate[~obj]), rel
        fraction = obj.mean()
        assert COVERAGE_RANGE[0] <= fraction <= COVERAGE_RANGE[1], (rel, fraction)
        differs = np.any(image != plate, axis=-1)
        assert differs[obj].mean() > 0.5, rel  # painted, not a no-op
        objects = rec["meta"]["objects"]
        assert obj.sum() == sum(o["area"] for o in objects)  # objects do not overlap
        for o in objects:
            x0, y0, x1, y1 = o["box"]
            assert 0 <= x0 < x1 <= image.shape[1] and 0 <= y0 < y1 <= image.shape[0]
            assert obj[y0:y1, x0:x1].any()


def test_splits_are_disjoint_and_cover_every_background(scenes):
    _, summary, records = scenes
    sigs: dict[str, set] = {s: set() for s in SPLITS}
    backgrounds: dict[str, set] = {s: set() for s in SPLITS}
    for split in SPLITS:
        for rec in records[split]:
            meta = rec["meta"]
            sig = tuple(sorted((o["kind"], o["color"]) for o in meta["objects"]))
            sigs[split].add((meta["background_id"], sig))
            backgrounds[split].add(meta["background_id"])
    assert not sigs["train"] & sigs["test"]
    assert backgrounds["train"] == backgrounds["test"] == set(summary["background_ids"])


def test_sibling_groups_share_identical_background(scenes):
    out, _, records = scenes
    groups: dict[str, list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
    for rel, rec in _images(records).items():
        groups[rec["meta"]["sibling_group"]].append((_load(out / rel), _load(out / rec["masks"][0]) > 0))
    assert len(groups) == 8  # 4 backgrounds x 2 splits
    for name, members in groups.items():
        assert len(members) >= 1
        ref_img, ref_mask = members[0]
        for img, mask in members[1:]:
            bg = ~(ref_mask | mask)
            assert np.array_equal(img[bg], ref_img[bg]), name


def test_answers_use_canonical_vocabulary(scenes):
    _, _, records = scenes
    vocab = {
        "color": set(PALETTE), "shape": set(OBJECT_KINDS), "count": {"1", "2", "3"},
        "position": {"left", "right", "top", "bottom", "center"}, "digit": {str(d) for d in range(10)},
        "background": {"room", "desk", "screen"},
    }
    seen_types = set()
    for split in SPLITS:
        for rec in records[split]:
            qtype, answer = rec["meta"]["question_type"], rec["messages"][1]["content"]
            objects, question = rec["meta"]["objects"], rec["messages"][0]["content"]
            seen_types.add(qtype)
            if qtype == "time":
                hour, minute = re.fullmatch(r"(\d{1,2}):(\d\d)", answer).groups()
                assert 1 <= int(hour) <= 12 and int(minute) % 5 == 0
                assert answer in [o["time"] for o in objects]
            else:
                assert answer in vocab[qtype], (qtype, answer)
            if qtype in ("color", "shape", "position"):
                assert ("largest" in question) == (len(objects) > 1)
                key = {"color": "color", "shape": "kind", "position": "position"}[qtype]
                assert answer == objects[0][key]
            if qtype == "count":
                assert answer == str(len(objects))
            if qtype == "background":
                assert answer == rec["meta"]["background_kind"]
    assert {"color", "shape", "count"} <= seen_types


def test_same_seed_is_byte_identical(scenes, tmp_path):
    out, _, _ = scenes

    def digests(root: Path) -> dict[str, str]:
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}

    generate_scenes(tmp_path / "again", **PARAMS)
    assert digests(tmp_path / "again") == digests(out)
    generate_scenes(tmp_path / "other", **{**PARAMS, "seed": 4})
    other = digests(tmp_path / "other")
    assert other["plates/room_000.png"] != digests(out)["plates/room_000.png"]


def test_position_rule():
    assert position_label(112, 112, 224, 224) == "center"
    assert position_label(20, 110, 224, 224) == "left"
    assert position_label(200, 120, 224, 224) == "right"
    assert position_label(100, 15, 224, 224) == "top"
    assert position_label(115, 210, 224, 224) == "bottom"
    assert position_label(20, 20, 224, 224) is None  # on the diagonal
    assert position_label(112 + 22.4, 112, 224, 224) is None  # on the centre boundary


@pytest.mark.parametrize("kwargs", [
    {"images_per_background": 1},
    {"num_backgrounds": 0},
    {"image_size": (63, 224)},
    {"image_size": (224,)},
    {"test_fraction": 0.0},
    {"test_fraction": 1.0},
    {"test_fraction": 1.5},
    {"seed": -1},
    {"num_backgrounds": 2.5},
])
def test_bad_parameters_raise(tmp_path, kwargs):
    with pytest.raises(ValueError):
        generate_scenes(tmp_path / "bad", **{**PARAMS, **kwargs})
    assert not (tmp_path / "bad").exists()
