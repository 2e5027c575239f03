"""The shipped ``data/`` folder: regenerated identically by its documented command, every entry loads
(LLaMA-Factory's reader and lf_ext's), every image has a mask, and the recipes default to it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import REPO_ROOT

DATA = REPO_ROOT / "data"
# the exact command that wrote data/ (also in the README); run from the repository root
COMMAND = ["scenes", "--out", "data", "--backgrounds", "6", "--images-per-background", "4", "--size", "224", "--seed", "0"]
GENERATED_JSON = ("dataset_info.json", "scenes_train.json", "scenes_test.json")
EXAMPLES = {"example_boxes": "boxes", "example_eval": "mask"}


def _generated_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and not p.name.startswith("example_"))


def test_readme_gives_the_command():
    assert "lf-ext " + " ".join(COMMAND) in (REPO_ROOT / "README.md").read_text()


def test_data_regenerates_identically(tmp_path):
    from lf_ext.cli import main

    out = tmp_path / "data"
    out.mkdir()
    shutil.copy(DATA / "dataset_info.json", out / "dataset_info.json")  # the example entries survive regeneration
    assert main([COMMAND[0], "--out", str(out)] + COMMAND[3:]) == 0
    assert _generated_files(out) == _generated_files(DATA)
    for name in _generated_files(DATA):
        if name.endswith(".png"):
            shipped, fresh = Image.open(DATA / name), Image.open(out / name)
            assert (shipped.mode, shipped.size) == (fresh.mode, fresh.size), name
            assert np.array_equal(np.asarray(shipped), np.asarray(fresh)), f"{name}: pixels differ"
        else:
            assert (DATA / name).read_bytes() == (out / name).read_bytes(), f"{name} differs"
    assert set(GENERATED_JSON) <= set(_generated_files(DATA))


def test_data_stays_small():
    size = sum(p.stat().st_size for p in DATA.rglob("*") if p.is_file())
    assert size < 3_000_000, f"data/ holds {size / 1e6:.1f} MB"


def test_every_entry_reads_and_every_image_has_a_mask():
    from llamafactory.data.parser import get_dataset_list

    from lf_ext.eval.datasets import read_records, record_images
    from lf_ext.masks.dataset import MaskIndex

    info = json.loads((DATA / "dataset_info.json").read_text())
    assert {"scenes_train", "scenes_test", *EXAMPLES} <= set(info)
    assert not any(key.startswith("_") for entry in info.values() for key in entry)  # plain entries, no comments
    attrs = get_dataset_list(list(info), str(DATA))  # LLaMA-Factory's own parser of dataset_info.json
    assert [a.dataset_name for a in attrs] == [entry["file_name"] for entry in info.values()]
    assert all(a.load_from == "file" and a.images for a in attrs)
    for name in info:
        records = read_records(DATA, name)
        assert records, name
        index = MaskIndex.from_dataset(DATA, [name])
        for record in records:
            assert record["messages"][-1]["role"] == "assistant" and record["messages"][-1]["content"]
            for image in record_images(record, DATA):
                assert Path(image).is_file(), image
                spec = index.get(image)
                assert spec, f"{name}: no mask for {image}"
                if name in EXAMPLES:
                    assert EXAMPLES[name] in spec


@pytest.mark.parametrize("name", ["scenes_train", *EXAMPLES])
def test_llamafactory_tokenizes_the_entry(tiny_dir, name):
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    from lf_ext.eval.datasets import read_records

    args = dict(model_name_or_path=str(tiny_dir("qwen2_vl")), template="qwen2_vl_bgobj", stage="sft", do_train=True,
                finetuning_type="full", dataset=name, dataset_dir=str(DATA), cutoff_len=1024, image_max_pixels=50176,
                output_dir=str(DATA / "never_written"), overwrite_cache=True, preprocessing_num_workers=1,
                report_to="none", bgobj_mask_provider="dataset", bgobj_mask_fallback="error")  # fmt: skip
    model_args, data_args, training_args, _, _ = get_train_args(args)
    tokenizer_module = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    module = get_dataset(template, model_args, data_args, training_args, "sft", **tokenizer_module)
    assert len(module["train_dataset"]) == len(read_records(DATA, name))
    assert not (DATA / "never_written").exists()


RECIPES = sorted(p for d in ("tiny", "qwen2_vl_2b", "qwen2_5_vl_3b") for p in (REPO_ROOT / "yaml" / d).glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_recipes_default_to_the_shipped_data(recipe):
    values = yaml.safe_load(recipe.read_text())
    if "dataset" not in values:  # export
        return
    assert values["dataset_dir"] == "data"
    info = json.loads((DATA / "dataset_info.json").read_text())
    assert all(name in info for name in values["dataset"].split(","))
    assert "work/demo/scenes" not in recipe.read_text().split("\n\n")[0]  # the header says where data comes from
