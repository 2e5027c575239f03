"""Video samples through ``llamafactory-cli``: stage 1 -> LoRA -> export on fixed-camera clips with their mask
frames, then a VideoStream over the test clips of a camera (hits after the first); lf_ext off = stock on videos."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from conftest import REPO_ROOT, run_cli, train_yaml, write_yaml
from test_stages import _recipe, _train
from lf_ext.scenes.video import generate_video_scenes

pytestmark = pytest.mark.integration
SIDE = 112


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    out = tmp_path_factory.mktemp("video_train")
    generate_video_scenes(out, num_cameras=2, clips_per_camera=4, frames=8, image_size=(SIDE, SIDE), progress=False)
    return out


@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen2_5_vl"])
def test_video_stages_export_and_stream(tmp_path, tiny_dir, clips, arch):
    from transformers import AutoModelForImageTextToText

    from lf_ext.inference.stream import VideoStream

    common = dict(dataset="video_train", dataset_dir=str(clips), video_max_pixels=SIDE * SIDE, template="qwen2_vl_bgobj")
    s1, s2, merged = tmp_path / "stage1", tmp_path / "stage2", tmp_path / "merged"
    _train(tmp_path, "s1", "stage1_projector.yaml", model_name_or_path=str(tiny_dir(arch)), output_dir=str(s1), **common)
    _train(tmp_path, "s2", "stage2_lora.yaml", model_name_or_path=str(s1), output_dir=str(s2), **common)
    losses = [r["loss"] for r in map(json.loads, (s2 / "trainer_log.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(losses) == 3 and all(loss == loss for loss in losses)  # finite (no NaN) on video batches
    export = write_yaml(tmp_path / "export.yaml", _recipe("export.yaml", model_name_or_path=str(s1), template="qwen2_vl_bgobj",
                                                          adapter_name_or_path=str(s2), export_dir=str(merged)))  # fmt: skip
    proc = run_cli(["llamafactory-cli", "export", str(export)], cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stdout[-4000:]
    _, info = AutoModelForImageTextToText.from_pretrained(merged, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info

    stream = VideoStream(dict(model_name_or_path=str(merged), template="qwen2_vl_bgobj", infer_dtype="float32",
                              max_new_tokens=4, do_sample=False, bgobj_mask_provider="motion", video_max_pixels=SIDE * SIDE))  # fmt: skip
    test = json.loads((clips / "video_test.json").read_text())
    camera = test[0]["meta"]["background_id"]
    videos = sorted({str(clips / r["videos"][0]) for r in test if r["meta"]["background_id"] == camera})
    answers = [stream.ask(video, "What moves?") for video in videos * 2]
    assert all(a.outcome is not None for a in answers)
    assert [a.outcome.kind for a in answers[len(videos):]] == ["hit"] * len(videos)  # every clip seen again: a hit
    assert stream.stats()["lookups"] == len(answers)


def test_video_training_with_lf_ext_off_is_stock(tmp_path, tiny_dir, clips):
    """Installed but not enabled (stock template), video batches train bitwise as with LF_EXT_DISABLE=1."""
    results = []
    for name, disable in (("on", False), ("off", True)):
        out = tmp_path / name
        values = train_yaml(tiny_dir("qwen2_vl"), clips, out, "qwen2_vl", dataset="video_train", video_max_pixels=SIDE * SIDE)
        proc = run_cli(["llamafactory-cli", "train", str(write_yaml(tmp_path / f"{name}.yaml", values))], cwd=tmp_path, disable=disable)
        assert proc.returncode == 0, proc.stdout[-3000:]
        losses = [r["loss"] for r in map(json.loads, (out / "trainer_log.jsonl").read_text().splitlines()) if "loss" in r]
        results.append((losses, load_file(out / "model.safetensors")))
    (losses_on, weights_on), (losses_off, weights_off) = results
    assert len(losses_on) == 3 and losses_on == losses_off
    assert all(weights_on[k].equal(weights_off[k]) for k in weights_on)
