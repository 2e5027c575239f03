"""qwen2_vl_bgobj through llamafactory-cli: mixed batches, mask fallbacks, and the web UI's template list."""

import json

import pytest

from conftest import run_cli, train_yaml, write_yaml


def _mixed_dataset(scenes_dir, tmp_path):
    """Scenes records with masks, the same images without masks, and text-only records, in one dataset."""
    records = json.loads((scenes_dir / "scenes_train.json").read_text())[:6]
    no_mask = [{k: v for k, v in r.items() if k != "masks"} for r in records[:2]]
    text_only = [{"messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "hi"}]}] * 3
    mixed = records[2:] + no_mask + text_only
    # a second copy of two images under new names, so that they really have no mask anywhere
    for index, record in enumerate(no_mask):
        src = scenes_dir / record["images"][0]
        dst = f"images/unmasked_{index}.png"
        (scenes_dir / dst).write_bytes(src.read_bytes())
        record["images"] = [dst]
    (scenes_dir / "mixed.json").write_text(json.dumps(mixed))
    info = json.loads((scenes_dir / "dataset_info.json").read_text())
    info["mixed"] = dict(info["scenes_train"], file_name="mixed.json")
    (scenes_dir / "dataset_info.json").write_text(json.dumps(info))
    return mixed


def _run(tmp_path, tiny_dir, scenes_dir, **bgobj):
    values = train_yaml(tiny_dir("qwen2_vl"), scenes_dir, tmp_path / "out", "qwen2_vl_bgobj", **bgobj)
    values.update(dataset="mixed", per_device_train_batch_size=4, max_steps=2)
    return run_cli(["llamafactory-cli", "train", str(write_yaml(tmp_path / "mixed.yaml", values))], cwd=tmp_path)


@pytest.mark.integration
def test_batch_mixing_text_only_masked_and_maskless_samples(tmp_path, tiny_dir, scenes_dir):
    _mixed_dataset(scenes_dir, tmp_path)
    proc = _run(tmp_path, tiny_dir, scenes_dir, bgobj_mask_provider="dataset")
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "no 'dataset' mask for" in proc.stdout and "using 'none'" in proc.stdout  # the documented fallback, logged


@pytest.mark.integration
def test_missing_mask_with_error_fallback_names_the_image(tmp_path, tiny_dir, scenes_dir):
    _mixed_dataset(scenes_dir, tmp_path)
    proc = _run(tmp_path, tiny_dir, scenes_dir, bgobj_mask_provider="dataset", bgobj_mask_fallback="error")
    assert proc.returncode != 0
    assert "unmasked_0.png: no mask for this image" in proc.stdout


def test_webui_offers_the_bgobj_template(tmp_path, monkeypatch):
    from llamafactory.webui.interface import create_ui

    monkeypatch.chdir(tmp_path)  # LlamaBoard writes llamaboard_cache/ in the working directory
    demo = create_ui()
    choices = [
        [c[0] if isinstance(c, (tuple, list)) else c for c in block.choices]
        for block in demo.blocks.values()
        if type(block).__name__ == "Dropdown" and getattr(block, "choices", None)
    ]
    assert any("qwen2_vl_bgobj" in c and "qwen2_vl" in c for c in choices)
