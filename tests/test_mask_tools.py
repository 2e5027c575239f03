"""show-mask and masks precompute, through the lf-ext command line."""

import json
import sys

import numpy as np
from PIL import Image

from conftest import REPO_ROOT, run_cli
from lf_ext.config import parse_bgobj_args
from lf_ext.masks.geometry import qwen2_vl_grid
from lf_ext.masks.pipeline import ObjectMasker


def _lf_ext(*args):
    return run_cli([sys.executable, "-m", "lf_ext.cli", *map(str, args)], cwd=REPO_ROOT)


def test_show_mask_writes_five_panels(scenes_dir, tmp_path):
    record = json.loads((scenes_dir / "scenes_test.json").read_text())[0]
    out = tmp_path / "panels.png"
    proc = _lf_ext("show-mask", scenes_dir / record["images"][0], "--arch", "qwen2_vl", "--provider", "entropy",
                   "--bgobj_entropy_alpha", "0.5", "--out", out)  # fmt: skip
    assert proc.returncode == 0, proc.stdout
    assert "object units of" in proc.stdout
    sheet = Image.open(out)
    assert sheet.width > 5 * 200 and sheet.height > 300


def test_show_mask_bad_inputs(tmp_path):
    proc = _lf_ext("show-mask", tmp_path / "missing.png", "--arch", "qwen2_vl", "--out", tmp_path / "x.png")
    assert proc.returncode == 2 and "image not found" in proc.stdout
    Image.new("RGB", (64, 64)).save(tmp_path / "ok.png")
    proc = _lf_ext("show-mask", tmp_path / "ok.png", "--arch", "qwen2_vl", "--provider", "sam", "--out", tmp_path / "x.png")
    assert proc.returncode == 2 and "not one of" in proc.stdout
    proc = _lf_ext("show-mask", tmp_path / "ok.png", "--arch", "qwen2_vl", "--bgobj_mask_provdier", "x", "--out", "x.png")
    assert proc.returncode == 2 and "Did you mean 'bgobj_mask_provider'" in proc.stdout


def test_precompute_then_dataset_provider_round_trip(scenes_dir, tmp_path):
    out = tmp_path / "masks"
    proc = _lf_ext("masks", "precompute", "--dataset-dir", scenes_dir, "--dataset", "scenes_test", "--out", out,
                   "--provider", "reference", "--bgobj_reference_image", scenes_dir / "plates" / "room_000.png",
                   "--image-max-pixels", 50176)  # fmt: skip
    assert proc.returncode == 0, proc.stdout
    index = json.loads((out / "index.json").read_text())["masks"]
    records = json.loads((scenes_dir / "scenes_test.json").read_text())
    assert len(index) == len({r["images"][0] for r in records})
    # the dataset provider reading the precomputed folder gives the same units as the provider itself
    direct = ObjectMasker.from_settings(parse_bgobj_args({"bgobj_mask_provider": "reference",
                                                         "bgobj_reference_image": str(scenes_dir / "plates/room_000.png")}))
    stored = ObjectMasker.from_settings(parse_bgobj_args({"bgobj_mask_provider": "dataset", "bgobj_mask_dir": str(out),
                                                         "bgobj_mask_fallback": "error"}))  # fmt: skip
    for record in records[:4]:
        path = scenes_dir / record["images"][0]
        image = Image.open(path)
        grid = qwen2_vl_grid(*image.size, image_max_pixels=50176)
        assert (direct.labels(image, grid) == stored.labels(image, grid, source=str(path))).all()
    # resumable: a second run writes nothing new; a deleted mask is written again
    first = sorted(out.rglob("*.png"))[0]
    first.unlink()
    proc = _lf_ext("masks", "precompute", "--dataset-dir", scenes_dir, "--dataset", "scenes_test", "--out", out,
                   "--provider", "reference", "--bgobj_reference_image", scenes_dir / "plates" / "room_000.png",
                   "--image-max-pixels", 50176)  # fmt: skip
    assert "'written': 1" in proc.stdout and first.exists()


def test_precompute_names_the_broken_sample(scenes_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    Image.new("RGB", (64, 64)).save(data / "good.png")
    (data / "bad.png").write_bytes(b"garbage")
    (data / "d.json").write_text(json.dumps([{"messages": [], "images": ["good.png"]}, {"messages": [], "images": ["bad.png"]}]))
    (data / "dataset_info.json").write_text(json.dumps({"d": {"file_name": "d.json", "formatting": "sharegpt",
                                                              "columns": {"messages": "messages", "images": "images"}}}))
    proc = _lf_ext("masks", "precompute", "--dataset-dir", data, "--dataset", "d", "--out", tmp_path / "m", "--provider", "entropy")
    assert proc.returncode == 2 and "bad.png: cannot read the image" in proc.stdout
    assert np.asarray(Image.open(tmp_path / "m" / "good.png")).any()  # work before the failure is kept
