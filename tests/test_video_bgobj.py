"""Video clips in the separated layout (tiny Qwen2-VL and Qwen2.5-VL): a static background encoded once from
the first slice, later slices only where units change; exact cache hits across clips of one camera; masks
from the dataset (mask frames / a mask video), a plate, the clip's median or motion; bad input named."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
import torch
from PIL import Image

from bgobj_helpers import load_for_inference
from lf_ext.cache import BackgroundCache
from lf_ext.families import family_of
from lf_ext.inference.reuse import BackgroundReuse
from lf_ext.layout import LAYOUT_KEY, Group, ImageLayout
from lf_ext.masks.base import MaskError
from lf_ext.plugins.clip_labels import VideoError
from lf_ext.scenes.video import generate_video_scenes, write_clip

ARCHS = ["qwen2_vl", "qwen2_5_vl"]
SIDE = 112
QUESTION = "<video>What moves?"


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    out = tmp_path_factory.mktemp("video_scenes")
    generate_video_scenes(out, num_cameras=2, clips_per_camera=3, frames=8, image_size=(SIDE, SIDE), progress=False)
    return out


def decode(path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def frame_list(folder, frames: list[np.ndarray]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{index:04d}.png")
        paths.append(str(folder / f"{index:04d}.png"))
    return paths


def _load(tiny_dir, arch, clips, **extra):
    args = dict(bgobj_mask_provider="motion", dataset="video_train", video_max_pixels=SIDE * SIDE) | extra
    return load_for_inference(tiny_dir(arch), clips, **args)


def encode_clip(loaded, video, question=QUESTION):
    tokenizer_module, template, _ = loaded
    tokenizer, processor = tokenizer_module["tokenizer"], tokenizer_module["processor"]
    messages = template.mm_plugin.process_messages([{"role": "user", "content": question}, {"role": "assistant", "content": ""}],
                                                   [], [video], [], processor)  # fmt: skip
    ids, _ = template.encode_oneturn(tokenizer, messages)
    inputs = template.mm_plugin.get_mm_inputs([], [video], [], [0], [1], [0], [ids], processor)
    return torch.tensor([ids]), inputs["pixel_values"], ImageLayout.unpack(inputs[LAYOUT_KEY]), inputs


@pytest.fixture(scope="module", params=ARCHS)
def motion(request, tiny_dir, clips):
    return request.param, _load(tiny_dir, request.param, clips)


# ------------------------------------------------------------------------------------------- layout
def test_clip_layout_background_once_and_changed_units_per_slice(motion, clips):
    arch, loaded = motion
    video = str(clips / "clips" / "room_000_0.mp4")
    ids, pixel_values, layout, inputs = encode_clip(loaded, video)
    processor = loaded[0]["processor"]
    stock = processor.video_processor(videos=[[Image.fromarray(f) for f in decode(video)]], return_tensors="pt")
    slices, rows, cols = layout.grids[0]
    assert (slices, rows * 2, cols * 2) == tuple(stock["video_grid_thw"][0].tolist()) and slices == 4
    assert torch.equal(pixel_values, stock["pixel_values_videos"])  # the tower sees the stock clip pixels
    assert "pixel_values_videos" not in inputs and layout.is_video(0) and layout.slice_seconds == (1,)
    groups = layout.item_groups(0)
    background = groups[0] == int(Group.BACKGROUND)
    assert int(((groups[1:] == int(Group.BACKGROUND))).sum()) == 0  # background tokens only from the first slice
    tokens = int(background.sum()) + int((groups == int(Group.OBJECT)).sum())
    assert layout.n_tokens(0) == tokens < slices * rows * cols / 2
    image_token = loaded[0]["tokenizer"].convert_tokens_to_ids("<|image_pad|>")
    assert int((ids == image_token).sum()) == tokens
    # motion: the background is what never moves; later tokens exactly where a unit changed since its last token
    from lf_ext.plugins.clip_labels import tokens_on_change

    frames = family_of(loaded[2]).video_pixel_units(processor).frame_units(pixel_values, layout, 0)
    static = (np.abs(frames.astype(int) - frames[0].astype(int)).mean(axis=(3, 4, 5)) <= 4.0).all(axis=0)
    assert np.array_equal(background.numpy(), static)
    assert np.array_equal((groups[1:] == int(Group.OBJECT)).numpy(), tokens_on_change(frames, 2, 4.0)[1:])


def test_dataset_masks_from_frames_folder_and_mask_video(tiny_dir, clips, tmp_path):
    """The record's video_masks (a PNG folder) and the same masks as a lossless mask video give the same split;
    the object units of every slice are those the mask frames cover (or whose pixels moved)."""
    loaded = _load(tiny_dir, "qwen2_vl", clips, bgobj_mask_provider="dataset", bgobj_mask_fallback="error")
    video = str(clips / "clips" / "room_000_0.mp4")
    _, _, from_folder, _ = encode_clip(loaded, video)
    masks = [np.asarray(Image.open(p)) for p in sorted((clips / "clips" / "room_000_0_masks").glob("*.png"))]
    rows, cols = from_folder.grids[0][1:]  # the video processor upscales 112 px frames by 3 (its min_pixels)
    ever_object = np.zeros((rows, cols), bool)
    for m in masks:
        big = np.kron(m > 0, np.ones((3, 3), bool))
        ever_object |= big.reshape(rows, 28, cols, 28).any(axis=(1, 3))
    split = from_folder.object_labels(0)[0].numpy()
    assert split[ever_object].all()  # a unit the object covers in any frame is never background
    assert split.sum() < split.size and ever_object.sum() > 0
    # the same masks as a mask video, registered in another dataset
    data = tmp_path / "data"
    data.mkdir()
    write_clip(data / "mask.mp4", [np.repeat(m[..., None], 3, axis=2) for m in masks])
    records = json.loads((clips / "video_train.json").read_text())[:1]
    records[0]["videos"], records[0]["video_masks"] = [video], [str(data / "mask.mp4")]
    (data / "v.json").write_text(json.dumps(records))
    (data / "dataset_info.json").write_text(json.dumps({"v": {"file_name": "v.json", "formatting": "sharegpt",
                                                              "columns": {"messages": "messages", "videos": "videos"},
                                                              "tags": {"role_tag": "role", "content_tag": "content",
                                                                       "user_tag": "user", "assistant_tag": "assistant"}}}))  # fmt: skip
    other = load_for_inference(tiny_dir("qwen2_vl"), data, dataset="v", bgobj_mask_provider="dataset", bgobj_mask_fallback="error",
                               video_max_pixels=SIDE * SIDE)  # fmt: skip
    _, _, from_video, _ = encode_clip(other, video)
    assert torch.equal(from_video.groups, from_folder.groups)


# ------------------------------------------------------------------------------------------- exactness
def _reuse(loaded):
    model = loaded[2]
    family = family_of(model)
    return BackgroundReuse(model, family, BackgroundCache(1 << 30), family.video_pixel_units(loaded[0]["processor"]))


def test_object_pixels_never_reach_the_background_prefix(motion, clips, tmp_path):
    """Changing the object's pixels in a later frame leaves the background tokens and the prefix KV
    (everything up to [BG_END]) bit-identical."""
    arch, loaded = motion
    frames = decode(clips / "clips" / "room_000_0.mp4")
    masks = [np.asarray(Image.open(p)) > 0 for p in sorted((clips / "clips" / "room_000_0_masks").glob("*.png"))]
    altered = [f.copy() for f in frames]
    altered[5][masks[5]] = 255 - altered[5][masks[5]]
    a = encode_clip(loaded, frame_list(tmp_path / "a", frames))
    b = encode_clip(loaded, frame_list(tmp_path / "b", altered))
    assert torch.equal(a[2].groups, b[2].groups) and not torch.equal(a[1], b[1])
    model, reuse = loaded[2], _reuse(loaded)
    family = family_of(model)
    bg_a = family.encode(model, a[1], a[2], groups=(Group.BACKGROUND,))
    bg_b = family.encode(model, b[1], b[2], groups=(Group.BACKGROUND,))
    assert torch.equal(bg_a, bg_b)
    pa = reuse.prefill(a[0], a[1], a[2], use_cache=False)
    pb = reuse.prefill(b[0], b[1], b[2], use_cache=False)
    end = reuse._span(a[0]).prefix_end
    for la, lb in zip(pa.past_key_values.layers, pb.past_key_values.layers):
        assert torch.equal(la.keys[..., :end, :], lb.keys[..., :end, :]) and torch.equal(la.values[..., :end, :], lb.values[..., :end, :])
    assert not torch.equal(pa.logits, pb.logits)


def test_next_clip_of_the_camera_hits_and_equals_recompute(motion, clips, tmp_path):
    """A clip that starts like a cached one (same first slice, other later frames) hits the cached background:
    only its object units (first slice, and where it changes) are encoded and prefilled, and the logits equal
    the model's own forward on that layout."""
    arch, loaded = motion
    first = decode(clips / "clips" / "room_000_0.mp4")
    other = decode(clips / "clips" / "room_000_1.mp4")
    reuse = _reuse(loaded)
    tower_rows = []  # patch rows the tower's first block sees per call: the work a hit saves, counted rather than timed
    hook = reuse.family.vision_tower(loaded[2]).blocks[0].register_forward_pre_hook(
        lambda module, args, kwargs: tower_rows.append((args[0] if args else kwargs["hidden_states"]).shape[0]), with_kwargs=True
    )
    try:
        miss = reuse.prefill(*encode_clip(loaded, frame_list(tmp_path / "first", first))[:3])
        miss_rows = sum(tower_rows)
        assert miss.outcome.kind == "miss" and miss.outcome.inserted
        ids, pixel_values, layout, _ = encode_clip(loaded, frame_list(tmp_path / "next", first[:2] + other[2:]))
        hit = reuse.prefill(ids, pixel_values, layout)
        hit_rows = sum(tower_rows) - miss_rows
    finally:
        hook.remove()
    assert hit.outcome.kind == "hit" and hit.outcome.background_units == miss.outcome.background_units  # the entry's B
    own_changes = layout.item_groups(0)[1:] == int(Group.OBJECT)
    assert torch.equal(hit.layout.item_groups(0)[1:] == int(Group.OBJECT), own_changes)  # its own later tokens
    model = loaded[2]
    with torch.no_grad():
        out = model(input_ids=hit.input_ids, pixel_values=pixel_values, bgobj_layout=hit.layout.pack(), position_ids=hit.position_ids)
    torch.testing.assert_close(hit.logits, out.logits[:, -1].float(), rtol=0, atol=1e-5)
    assert 0 < hit_rows < miss_rows  # the tower encoded only the hit's object units


def test_generate_through_the_cache_equals_without(tiny_dir, clips):
    from llamafactory.chat import ChatModel

    from lf_ext.inference.runtime import runtime_of

    args = dict(model_name_or_path=str(tiny_dir("qwen2_vl")), template="qwen2_vl_bgobj", infer_dtype="float32", max_new_tokens=6,
                do_sample=False, bgobj_mask_provider="motion", video_max_pixels=SIDE * SIDE)  # fmt: skip
    plain = ChatModel(dict(args, bgobj_cache=False))
    cached = ChatModel(args)
    video = str(clips / "clips" / "desk_000_1.mp4")
    expected = plain.chat([{"role": "user", "content": QUESTION}], videos=[video])[0].response_text
    for _ in range(2):
        assert cached.chat([{"role": "user", "content": QUESTION}], videos=[video])[0].response_text == expected
    stats = runtime_of(cached.engine.model).stats()
    assert (stats["misses"], stats["hits"]) == (1, 1)


# ------------------------------------------------------------------------------------------- bad input
def test_bad_videos_are_named(motion, clips, tmp_path):
    arch, loaded = motion
    with pytest.raises(VideoError, match=r"request, video 1 of 1: cannot read the video .*missing.mp4"):
        encode_clip(loaded, str(tmp_path / "missing.mp4"))
    (tmp_path / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    with pytest.raises(VideoError, match=r"cannot read the video .*corrupt.mp4"):
        encode_clip(loaded, str(tmp_path / "corrupt.mp4"))
    with av.open(str(tmp_path / "empty.mp4"), "w") as container:  # a stream without a single frame
        stream = container.add_stream("libx264", rate=2)
        stream.width = stream.height = 64
    with pytest.raises(VideoError, match=r"empty.mp4 (has no video stream|has no decodable frames|\()"):
        encode_clip(loaded, str(tmp_path / "empty.mp4"))
    image = str(clips / "plates" / "room_000.png")
    with pytest.raises(VideoError, match="both images and videos"):
        loaded[1].mm_plugin.process_messages([{"role": "user", "content": "<image><video>x"}], [image],
                                             [str(clips / "clips" / "room_000_0.mp4")], [], loaded[0]["processor"])  # fmt: skip


def test_one_frame_clip_is_one_slice(motion, tmp_path):
    """Shorter than a temporal slice: LLaMA-Factory repeats the frame (a one-slice clip, all background)."""
    arch, loaded = motion
    frame = np.random.default_rng(0).integers(0, 255, (SIDE, SIDE, 3), dtype=np.uint8)
    _, _, layout, _ = encode_clip(loaded, frame_list(tmp_path / "one", [frame]))
    assert layout.grids[0][0] == 1 and layout.n_object(0) == 0


def test_mask_video_of_the_wrong_size_or_length(tiny_dir, clips, tmp_path):
    video = str(clips / "clips" / "room_000_0.mp4")
    records = json.loads((clips / "video_train.json").read_text())[:1]
    records[0]["videos"] = [video]
    for name, masks in (("small", [np.zeros((56, 56, 3), np.uint8)] * 8), ("short", [np.zeros((SIDE, SIDE, 3), np.uint8)] * 3)):
        data = tmp_path / name
        data.mkdir()
        write_clip(data / "mask.mp4", masks)
        records[0]["video_masks"] = [str(data / "mask.mp4")]
        (data / "v.json").write_text(json.dumps(records))
        (data / "dataset_info.json").write_text(json.dumps({"v": {"file_name": "v.json", "formatting": "sharegpt",
                                                                  "columns": {"messages": "messages", "videos": "videos"},
                                                                  "tags": {"role_tag": "role", "content_tag": "content",
                                                                           "user_tag": "user", "assistant_tag": "assistant"}}}))  # fmt: skip
        loaded = load_for_inference(tiny_dir("qwen2_vl"), data, dataset="v", bgobj_mask_provider="dataset",
                                    bgobj_mask_fallback="error", video_max_pixels=SIDE * SIDE)  # fmt: skip
        expected = r"mask frame 1 is 56x56, the video 112x112" if name == "small" else r"mask video .* has 3 frames, the video at least"
        with pytest.raises(MaskError, match=rf"dataset 'v' record 0 \(v.json\), video 1 of 1: {expected}"):
            encode_clip(loaded, video)
