"""``bgobj_video_pool_stride`` / ``bgobj_video_pool_mode``: 2-D pooling of each slice's merged tokens on the
stock Qwen templates (tiny Qwen2-VL and Qwen2.5-VL): the pooled grid's token count, features and M-RoPE
positions, stock behaviour when off, bad values refused before training."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
import torch
from PIL import Image

from bgobj_helpers import load_for_inference
from conftest import REPO_ROOT, run_cli, train_yaml, write_yaml
from lf_ext.config import BgObjConfigError, Settings
from lf_ext.families import family_of
from lf_ext.layout import LAYOUT_KEY, ImageLayout
from lf_ext.pooling import pool_grid, pool_layout_tokens
from lf_ext.scenes.video import generate_video_scenes

ARCHS = ["qwen2_vl", "qwen2_5_vl"]
SIDE = 112
QUESTION = "<video>What moves?"


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    out = tmp_path_factory.mktemp("video_pool")
    generate_video_scenes(out, num_cameras=1, clips_per_camera=3, frames=8, image_size=(SIDE, SIDE), progress=False)
    return out


# ------------------------------------------------------------------------------------------- pooling
def test_pool_grid_modes_by_hand():
    """A 1-slice 3x3 grid of scalar tokens 0..8, stride 2: edge cells pool the tokens they have."""
    tokens = torch.arange(9.0).reshape(9, 1)
    assert pool_grid(tokens, (1, 3, 3), 2, "average").reshape(-1).tolist() == [2.0, 3.5, 6.5, 8.0]
    assert pool_grid(tokens, (1, 3, 3), 2, "max").reshape(-1).tolist() == [4.0, 5.0, 7.0, 8.0]
    bilinear = pool_grid(tokens, (1, 3, 3), 2, "bilinear").reshape(-1)
    assert bilinear.shape == (4,) and bilinear[0] < bilinear[1] < bilinear[2] < bilinear[3]
    two = torch.cat([tokens, tokens + 100]).reshape(18, 1)  # two slices pool separately
    assert pool_grid(two, (2, 3, 3), 2, "average").reshape(-1).tolist() == [2.0, 3.5, 6.5, 8.0, 102.0, 103.5, 106.5, 108.0]
    assert torch.equal(pool_grid(tokens, (1, 3, 3), 1, "average"), tokens)


def test_pooled_layout_counts_packs_and_refuses_what_it_cannot_pool():
    layout = ImageLayout(((4, 5, 3),), torch.zeros(60, dtype=torch.int8), separated=False, slice_seconds=(1,), pools=(2,),
                         pool_mode="max")  # fmt: skip
    assert layout.token_grid(0) == (4, 3, 2) and layout.n_tokens(0) == 24 and layout.n_tokens() == 24
    again = ImageLayout.unpack(layout.pack())
    assert again.pools == (2,) and again.pool_mode == "max" and again.n_tokens(0) == 24
    with pytest.raises(ValueError, match="plain item with every unit kept"):
        ImageLayout(((1, 2, 2),), torch.zeros(4, dtype=torch.int8), separated=True, pools=(2,))
    with pytest.raises(ValueError, match="plain item with every unit kept"):
        ImageLayout(((1, 2, 2),), torch.tensor([0, 0, 2, 0], dtype=torch.int8), separated=False, pools=(2,))
    with pytest.raises(ValueError, match="pool_mode"):
        ImageLayout(((1, 2, 2),), torch.zeros(4, dtype=torch.int8), separated=False, pools=(2,), pool_mode="median")


# ------------------------------------------------------------------------------------------- model
def _load(tiny_dir, arch, clips, **keys):
    args = dict(template="qwen2_vl", dataset="video_train", video_max_pixels=SIDE * SIDE) | keys
    return load_for_inference(tiny_dir(arch), clips, **args)


def _encode(loaded, video):
    tokenizer_module, template, _ = loaded
    tokenizer, processor = tokenizer_module["tokenizer"], tokenizer_module["processor"]
    messages = template.mm_plugin.process_messages([{"role": "user", "content": QUESTION}, {"role": "assistant", "content": ""}],
                                                   [], [video], [], processor)  # fmt: skip
    ids, _ = template.encode_oneturn(tokenizer, messages)
    inputs = template.mm_plugin.get_mm_inputs([], [video], [], [0], [1], [0], [ids], processor)
    return torch.tensor([ids]), inputs


def _stock_video_inputs(processor, video):
    with av.open(video) as container:
        frames = [Image.fromarray(f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
    return processor.video_processor(videos=[frames], return_tensors="pt")


OPTIONS = {
    "pool_average": dict(bgobj_video_pool_stride=2),
    "pool_max": dict(bgobj_video_pool_stride=2, bgobj_video_pool_mode="max"),
    "pool_bilinear": dict(bgobj_video_pool_stride=2, bgobj_video_pool_mode="bilinear"),
    "scales": dict(bgobj_video_scales="1.0,0.75,0.5"),
    "fast_slow": dict(bgobj_video_fast_slow=True, bgobj_video_slow_stride=2, bgobj_video_num_fast=3),
    "all": dict(bgobj_video_pool_stride=2, bgobj_video_scales=[1.0, 0.5], bgobj_video_fast_slow=True, bgobj_video_slow_stride=3),
}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("option", list(OPTIONS))
@torch.no_grad()
def test_clip_streams_tokens_features_and_positions(tiny_dir, clips, arch, option):
    """Each stream of the clip: its token count is its resampled grid's; its features are the stock video
    tower's for its slices, scaled and pooled; its positions are what the stock model gives a clip of
    that grid (and its slices' time span)."""
    from lf_ext.config import Settings
    from lf_ext.plugins.clip_streams import clip_streams

    keys = Settings.from_dict(OPTIONS[option]).keys
    loaded = _load(tiny_dir, arch, clips, **OPTIONS[option])
    tokenizer_module, _, model = loaded
    family = family_of(model)
    video = str(clips / "clips" / "room_000_0.mp4")
    ids, inputs = _encode(loaded, video)
    layout = ImageLayout.unpack(inputs[LAYOUT_KEY])
    stock = _stock_video_inputs(tokenizer_module["processor"], video)
    slices, height, width = stock["video_grid_thw"][0].tolist()
    rows, cols = height // 2, width // 2
    streams = clip_streams(keys, slices)
    assert len(layout) == len(streams) > (1 if option in ("scales", "fast_slow", "all") else 0) and not layout.separated
    image = family.image_token_id(model.config)
    assert int((ids == image).sum()) == layout.n_tokens() == sum(
        len(st.slices) * -(-max(1, round(rows * st.scale)) // st.pool) * -(-max(1, round(cols * st.scale)) // st.pool) for st in streams)

    stock_tokens = family.stock_features(model, dict(stock)).reshape(slices, rows * cols, -1)
    expected = torch.cat([pool_grid(stock_tokens[list(st.slices)].reshape(-1, stock_tokens.shape[-1]), (len(st.slices), rows, cols),
                                    st.pool, keys.bgobj_video_pool_mode, layout.scaled_grid(item)) for item, st in enumerate(streams)])
    ours = pool_layout_tokens(family.encode(model, inputs["pixel_values"], layout), layout)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)

    # positions: the stock get_rope_index on the same ids, each stream's tokens a video of its resampled grid
    video_token = int(model.config.video_token_id)
    as_video = torch.where(ids == image, torch.full_like(ids, video_token), ids)
    grid_thw = torch.tensor([[t, r * 2, c * 2] for t, r, c in (layout.token_grid(i) for i in range(len(layout)))])
    extra = {"second_per_grid_ts": torch.tensor(layout.slice_seconds, dtype=torch.float)} if arch == "qwen2_5_vl" else {}
    mm_types = 2 * (as_video == video_token).int()
    expected_positions, _ = model.model.get_rope_index(as_video, mm_token_type_ids=mm_types, video_grid_thw=grid_thw, **extra)
    assert torch.equal(family.positions(model, ids, layout), expected_positions)

    out = model(input_ids=ids, **{k: v for k, v in inputs.items() if k != "mm_token_type_ids"})
    assert torch.isfinite(out.logits).all()


def test_clip_streams_by_hand():
    from lf_ext.config import Settings
    from lf_ext.plugins.clip_streams import clip_streams

    keys = Settings.from_dict(dict(bgobj_video_fast_slow=True, bgobj_video_num_slow=2, bgobj_video_pool_stride=2,
                                   bgobj_video_scales="1.0,0.5")).keys  # fmt: skip
    slow, scaled, fast = clip_streams(keys, 10)
    assert (slow.slices, slow.pool, slow.scale, slow.slice_stride) == ((0, 4), 2, 1.0, 4)
    assert (scaled.slices, scaled.pool, scaled.scale) == ((0, 4), 2, 0.5)
    assert (fast.slices, fast.pool, fast.slice_stride) == (tuple(range(8)), 4, 1)
    (only,) = clip_streams(Settings.from_dict(dict(bgobj_video_pool_stride=3)).keys, 5)
    assert (only.slices, only.pool) == (tuple(range(5)), 3)


@torch.no_grad()
def test_stride_one_leaves_the_stock_video_path(tiny_dir, clips):
    loaded = _load(tiny_dir, "qwen2_vl", clips, bgobj_video_pool_stride=1)
    _, template, _ = loaded
    assert not hasattr(template.mm_plugin, "plain_clips")  # LLaMA-Factory's own plugin
    _, inputs = _encode(loaded, str(clips / "clips" / "room_000_0.mp4"))
    assert "pixel_values_videos" in inputs and LAYOUT_KEY not in inputs


# ------------------------------------------------------------------------------------------- bad values
@pytest.mark.parametrize(("keys", "message"), [
    (dict(bgobj_video_pool_stride=0), "bgobj_video_pool_stride must be >= 1"),
    (dict(bgobj_video_pool_stride=2, bgobj_video_pool_mode="median"), "bgobj_video_pool_mode='median' is not one of"),
    (dict(bgobj_video_pool_stride=2, bgobj_patch_selection="budget"), "cannot be combined yet"),
    (dict(bgobj_video_scales="1.0,0"), r"bgobj_video_scales must be numbers in \(0, 1\]"),
    (dict(bgobj_video_scales=[1.0, 1.5]), r"bgobj_video_scales must be numbers in \(0, 1\]"),
    (dict(bgobj_video_scales="big"), r"bgobj_video_scales must be numbers"),
    (dict(bgobj_video_fast_slow=True, bgobj_video_slow_stride=0), "bgobj_video_slow_stride must be >= 1"),
    (dict(bgobj_video_num_fast=0), "bgobj_video_num_fast must be >= 1"),
])  # fmt: skip
def test_bad_values_are_refused(keys, message):
    with pytest.raises(BgObjConfigError, match=message):
        Settings.from_dict(keys)


def test_separated_template_and_image_only_data_are_refused_before_training(tiny_dir, clips, tmp_path):
    from llamafactory.hparams import get_train_args

    with pytest.raises(BgObjConfigError, match="not with the separated layout"):
        _load(tiny_dir, "qwen2_vl", clips, template="qwen2_vl_bgobj", bgobj_mask_provider="motion", bgobj_video_pool_stride=2)
    info = json.loads((clips / "dataset_info.json").read_text())
    info["frames_as_text"] = {"file_name": "video_train.json", "formatting": "sharegpt", "columns": {"messages": "messages"},
                              "tags": info["video_train"].get("tags", {})}  # fmt: skip
    (clips / "dataset_info.json").write_text(json.dumps(info))
    args = train_yaml(tiny_dir("qwen2_vl"), clips, tmp_path / "out", "qwen2_vl", dataset="frames_as_text", bgobj_video_pool_stride=2)
    with pytest.raises(BgObjConfigError, match="declares a 'videos' column"):
        get_train_args({k: str(v) if hasattr(v, "parts") else v for k, v in args.items()})


# ------------------------------------------------------------------------------------------- training
@pytest.mark.integration
def test_llamafactory_train_and_chat_with_every_video_option(tmp_path, tiny_dir, clips):
    out = tmp_path / "pooled"
    values = train_yaml(tiny_dir("qwen2_vl"), clips, out, "qwen2_vl", dataset="video_train", video_max_pixels=SIDE * SIDE,
                        **OPTIONS["all"])  # fmt: skip
    proc = run_cli(["llamafactory-cli", "train", str(write_yaml(tmp_path / "train.yaml", values))], cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stdout[-4000:]
    losses = [r["loss"] for r in map(json.loads, (out / "trainer_log.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert "bgobj_video_fast_slow=True" in proc.stdout

    from llamafactory.chat import ChatModel

    chat = ChatModel(dict(model_name_or_path=str(out), template="qwen2_vl", infer_dtype="float32", max_new_tokens=3,
                          do_sample=False, video_max_pixels=SIDE * SIDE, **OPTIONS["all"]))  # fmt: skip
    assert chat.engine.template.mm_plugin.plain_clips  # the clip is pooled in chat too
    reply = chat.chat([{"role": "user", "content": QUESTION}], videos=[str(clips / "clips" / "room_000_1.mp4")])[0]
    assert isinstance(reply.response_text, str)


@pytest.mark.integration
def test_ddp_gloo_with_every_video_option(tmp_path, tiny_dir, clips):
    values = train_yaml(tiny_dir("qwen2_vl"), clips, tmp_path / "out", "qwen2_vl", dataset="video_train", ddp_backend="gloo",
                        video_max_pixels=SIDE * SIDE, **OPTIONS["all"])  # fmt: skip
    proc = run_cli(["llamafactory-cli", "train", str(write_yaml(tmp_path / "ddp.yaml", values))], cwd=tmp_path,
                   FORCE_TORCHRUN="1", NPROC_PER_NODE="2")  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:]
    for rank in (0, 1):
        assert f"[INFO|lf_ext|rank{rank}] bgobj: plain layout on (video options)" in proc.stdout
    losses = [r["loss"] for r in map(json.loads, (tmp_path / "out" / "trainer_log.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(losses) == 3 and all(np.isfinite(losses))
