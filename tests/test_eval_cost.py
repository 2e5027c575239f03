"""``lf-ext eval-cost``: tokens per sample from the records' real token grids, GPU-hours from the stated model."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from lf_ext.eval.cost import GPUS, MODELS, estimate
from lf_ext.masks.geometry import grid_for_arch


def _dataset(root, records):
    (root / "dataset_info.json").write_text(json.dumps({"d": {"file_name": "d.json", "formatting": "sharegpt",
                                                              "columns": {"messages": "messages", "images": "images",
                                                                          "videos": "videos"},
                                                              "tags": {"role_tag": "role", "content_tag": "content",
                                                                       "user_tag": "user", "assistant_tag": "assistant"}}}))  # fmt: skip
    (root / "d.json").write_text(json.dumps(records))
    from lf_ext.eval.datasets import read_records

    return read_records(root, "d")


def test_tokens_and_hours_follow_the_stated_model(tmp_path):
    Image.new("RGB", (560, 280)).save(tmp_path / "a.png")
    for i in range(4):
        Image.new("RGB", (280, 280)).save(tmp_path / f"f{i}.png")
    question = {"role": "user", "content": "<image>" + "x" * 40}
    records = _dataset(tmp_path, [
        {"messages": [question, {"role": "assistant", "content": "yes"}], "images": ["a.png"]},
        {"messages": [{"role": "user", "content": "<video>" + "x" * 40}, {"role": "assistant", "content": "yes"}],
         "videos": [[f"f{i}.png" for i in range(4)]]},
    ])  # fmt: skip
    row = estimate(records, tmp_path, "qwen2_vl_2b", gpu="h100", configs=2, image_max_pixels=560 * 280, step_overhead_ms=10.0)
    units = grid_for_arch("qwen2_vl", 560, 280, image_max_pixels=560 * 280).num_units
    frame_units = grid_for_arch("qwen2_vl", 280, 280, image_max_pixels=256 * 256).num_units
    assert units == 200
    assert row["mean_tokens"]["visual"] == pytest.approx((units + 2 * frame_units) / 2)  # 4 frames = 2 temporal slices
    spec, gpu = MODELS["qwen2_vl_2b"], GPUS["h100"]
    peak = gpu.bf16_tflops * 1e12 * 0.4
    patches = (units + 2 * 2 * frame_units) * 4
    assert row["seconds_per_sample"]["vision"] == pytest.approx(2 * spec.vision_params * patches / 2 / peak)
    text = (len("<image>" + "x" * 40) / 4 + 16 + len("<video>" + "x" * 40) / 4 + 16) / 2
    assert row["mean_tokens"]["text"] == pytest.approx(round(text), abs=1)
    assert row["mean_tokens"]["answer"] == 2  # "yes" + end of turn
    total = sum(row["seconds_per_sample"].values()) * 2 * 2 / 3600
    assert row["gpu_hours"] == pytest.approx(total)
    # LLaVA-1.5 answers the video question from 2 frames as images: 2 x 576 tokens
    llava = estimate(records[1:], tmp_path, "llava1_5_7b", frames_as_images=2)
    assert llava["mean_tokens"]["visual"] == 2 * 576


def test_errors_name_the_record_and_the_choices(tmp_path):
    records = _dataset(tmp_path, [{"messages": [{"role": "user", "content": "<image>q"}, {"role": "assistant", "content": "a"}],
                                   "images": ["missing.png"]}])  # fmt: skip
    with pytest.raises(ValueError, match="record 0.*missing.png"):
        estimate(records, tmp_path, "qwen2_vl_2b")
    with pytest.raises(ValueError, match="unknown model 'gpt'"):
        estimate(records, tmp_path, "gpt")


def test_cli_reads_a_recipe(tmp_path, capsys):
    from lf_ext.cli import main

    Image.new("RGB", (336, 336)).save(tmp_path / "a.png")
    _dataset(tmp_path, [{"messages": [{"role": "user", "content": "<image>q"}, {"role": "assistant", "content": "a"}],
                         "images": ["a.png"]}] * 3)  # fmt: skip
    recipe = tmp_path / "llava1_5_7b_gqa.yaml"
    recipe.write_text(f"task: gqa\ndataset_dir: {tmp_path}\ndataset: d\nconfigs: stock,bgobj\nmax_new_tokens: 8\n")
    assert main(["eval-cost", "--config", str(recipe), "--json", str(tmp_path / "c.json")]) == 0
    row = json.loads((tmp_path / "c.json").read_text())["rows"][0]
    assert row["model"] == "llava1_5_7b" and row["n"] == 3 and row["configs"] == 2 and row["mean_tokens"]["visual"] == 576
    assert "llava1_5_7b on one a100" in capsys.readouterr().out


def test_decode_pays_the_weights_and_the_step_overhead_per_token(tmp_path):
    from lf_ext.eval.cost import SampleTokens, seconds_per_sample

    spec, gpu = MODELS["llava1_5_7b"], GPUS["a100"]
    tokens = SampleTokens(visual=576, patches=576, text=40, answer=5)
    read = 2 * (spec.llm_params + spec.vision_params) / (gpu.memory_tbps * 1e12 * 0.5)
    assert seconds_per_sample(tokens, spec, gpu, 0.4, 0.5, 20.0)["decode"] == pytest.approx(5 * (read + 0.020))
