"""``lf-ext bench ttft``, ``bench stream`` and ``bench accuracy``'s forced-hit evaluation on tiny models (fast settings)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image


def test_bench_ttft_rows_and_plot(tmp_path):
    from lf_ext.bench.ttft import run_bench_ttft

    rows = run_bench_ttft(tmp_path / "ttft.json", plot=tmp_path / "ttft.png", shapes=("tiny",), sizes=(224,),
                          fractions=(0.2, 0.5), runs=1, warmup=0, checkpoints=tmp_path / "ckpt", reuse_stock=True)  # fmt: skip
    saved = json.loads((tmp_path / "ttft.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(rows)) and len(rows) == 2
    for row, target in zip(rows, (0.2, 0.5)):
        for key in ("arch", "image_px", "object_fraction", "stock_ms", "miss_ms", "hit_ms", "limit_speedup"):
            assert key in row
        assert row["image_px"] == 224 and row["units"] == 64
        assert abs(row["object_fraction"] - target) < 0.1 and row["object_units"] == round(row["object_fraction"] * 64)
        assert row["hit_prefill_tokens"] < row["prompt_tokens"]
        assert row["components_ms"]["hit_vision_ms"] > 0 and row["limit_ms"] <= row["hit_ms"]
    assert rows[1]["stock_reused"] and rows[1]["stock_ms"] == rows[0]["stock_ms"]  # stock measured once per size
    assert (tmp_path / "ttft.png").stat().st_size > 10_000


def test_bench_stream_refinement_turns_rejections_into_hits(tmp_path):
    """The clock changes in every frame: without refinement every later frame is a rejection. With it, a
    rejection drops the clock from the request's own background; once a place has such an entry, every
    later frame at that place hits, served with its own object plus the clock (the closest split)."""
    from lf_ext.bench.stream import CLOCK_UNITS, run_bench_stream, stream_frames

    result = run_bench_stream(tmp_path / "stream.json", shape="tiny", px=224, frames=8, positions=2,
                              object_fraction=0.1, stock_frames=1, checkpoints=tmp_path / "ckpt")  # fmt: skip
    assert json.loads((tmp_path / "stream.json").read_text())["rows"] == json.loads(json.dumps(result["rows"]))
    frames = stream_frames(224, 8, 2, 0.1)
    places = [place for _, _, place in frames]
    plain, refined = result["per_frame"]["cache"], result["per_frame"]["cache+refine"]
    assert [f["place"] for f in refined] == places
    assert [f["kind"] for f in plain] == ["miss"] + ["rejection"] * 7
    clock_free = set()  # places with an entry whose background excludes the clock
    for k in range(1, 8):
        if places[k] in clock_free:
            assert refined[k]["kind"] == "hit", refined
            assert refined[k]["object_units"] == int(frames[k][1].sum()) + CLOCK_UNITS
        else:
            assert refined[k]["kind"] == "rejection" and refined[k]["refined"], refined
            clock_free.add(places[k])
    rows = {row["mode"]: row for row in result["rows"]}
    assert rows["cache+refine"]["hits"] > 0 and rows["cache"]["hits"] == 0 and rows["exact"]["hits"] == 0
    # 'exact': only the frame's own split may serve: a new place is a miss, a seen place a rejection (the clock)
    assert [f["kind"] for f in result["per_frame"]["exact"]] == ["rejection" if p in places[:k] else "miss" for k, p in enumerate(places)]
    only = run_bench_stream(tmp_path / "two.json", shape="tiny", px=224, frames=3, positions=2, stock_frames=1,
                            checkpoints=tmp_path / "ckpt", modes=("cache+refine",))  # fmt: skip
    assert [row["mode"] for row in only["rows"]] == ["stock", "cache+refine"]
    with pytest.raises(ValueError, match="unknown stream mode 'fast'"):
        run_bench_stream(tmp_path / "x.json", shape="tiny", frames=2, checkpoints=tmp_path / "ckpt", modes=("fast",))


BOXES = [(0, 0, 56, 56), (112, 56, 168, 112), (56, 112, 112, 168), (0, 0, 56, 56)]  # img3 where img0


def _plate_dataset(root, background_ids):
    """Four 224x168 images on one plate, objects in different boxes (masks = boxes); ``meta`` gives each
    image a background id and a sibling group per id."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    plate = rng.integers(0, 256, size=(168, 224, 3), dtype=np.uint8)
    records = []
    for index, ((x0, y0, x1, y1), background) in enumerate(zip(BOXES, background_ids)):
        pixels, mask = plate.copy(), np.zeros((168, 224), np.uint8)
        pixels[y0:y1, x0:x1] = rng.integers(0, 256, size=(y1 - y0, x1 - x0, 3), dtype=np.uint8)
        mask[y0:y1, x0:x1] = 255
        Image.fromarray(pixels).save(root / f"img{index}.png")
        Image.fromarray(mask).save(root / f"mask{index}.png")
        records.append({"messages": [{"role": "user", "content": "<image>What color?"}, {"role": "assistant", "content": "red"}],
                        "images": [f"img{index}.png"], "masks": [f"mask{index}.png"],
                        "meta": {"background_id": background, "sibling_group": f"test/{background}", "question_type": "color"}})  # fmt: skip
    (root / "data.json").write_text(json.dumps(records))
    (root / "dataset_info.json").write_text(json.dumps({"plates": {"file_name": "data.json", "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}}}))  # fmt: skip
    return root, records


def test_forced_hits_count_hits_and_false_hits(tiny_dir, tmp_path):
    """One plate, four objects. Labelled as one background, every question is answered from a sibling's
    cached background (a true hit). Labelled as two backgrounds with identical pixels, hits across
    the two labels are counted as false hits."""
    from lf_ext.eval.forcing import forced_hits

    for name, ids in (("same", ["p"] * 4), ("split", ["q", "q", "q", "p"])):
        root, records = _plate_dataset(tmp_path / name, ids)
        args = dict(bgobj_mask_provider="dataset", dataset_dir=str(root), dataset="plates", bgobj_mask_fallback="error")
        result = forced_hits(tiny_dir("qwen2_vl"), "qwen2_vl_bgobj", root, records, args, 50176)
        assert result["n"] == 4 and sum(result["outcomes"].values()) == 4
        if name == "same":
            assert result["outcomes"]["hit"] == 4 and result["sibling_entries"] == 4 and result["false_hits"] == 0
        else:  # img3 ('p', no sibling) verifies against img0's entry ('q', same pixels): a false hit by identity
            assert result["outcomes"]["hit"] == 4 and result["sibling_entries"] == 3 and result["false_hits"] == 1
            (example,) = result["false_hit_examples"]
            assert example["media"] == "img3.png" and set(example["served_from"]) <= {"img0.png", "img1.png", "img2.png"}


def test_bench_accuracy_rejects_unusable_datasets(tmp_path):
    from lf_ext.bench.accuracy import check_records, default_mask_keys

    good = {"messages": [{"role": "user", "content": "<image>Q?"}, {"role": "assistant", "content": "red"}], "images": ["a.png"]}
    with pytest.raises(ValueError, match="record 1: need a user question, an answer and images"):
        check_records([good, {"messages": good["messages"]}], "mine")
    long_answer = dict(good, messages=[good["messages"][0], {"role": "assistant", "content": "a b c d e f g h i j"}])
    with pytest.raises(ValueError, match="answers must be short"):
        check_records([long_answer], "mine")
    with pytest.raises(ValueError, match="ships no masks"):
        default_mask_keys([good], {})
    assert default_mask_keys([dict(good, masks=["m.png"])], {}) == {"bgobj_mask_provider": "dataset"}
    assert default_mask_keys([good], {"bgobj_mask_provider": "entropy"})["bgobj_mask_provider"] == "entropy"


def test_forced_hits_under_the_exact_policy_agree_with_cache_off(tiny_dir, tmp_path):
    """Policy 'exact': the forced entries (other images' splits, sibling unions) never match a question's own
    split, so nothing is served from them and every answer equals the cache-off answer."""
    from lf_ext.eval.forcing import forced_hits
    from lf_ext.eval.runner import agreement, exact_match

    root, records = _plate_dataset(tmp_path / "exact", ["p"] * 4)
    args = dict(bgobj_mask_provider="dataset", dataset_dir=str(root), dataset="plates", bgobj_mask_fallback="error")
    exact = forced_hits(tiny_dir("qwen2_vl"), "qwen2_vl_bgobj", root, records, dict(args, bgobj_cache_policy="exact"), 50176)
    off = exact_match(tiny_dir("qwen2_vl"), "qwen2_vl_bgobj", root, records, extra_args=dict(args, bgobj_cache=False))
    assert exact["outcomes"]["hit"] == 0 and agreement(exact["answers"], off["answers"]) == 1.0
    with pytest.raises(ValueError, match="4 answers against 3"):
        agreement(exact["answers"], off["answers"][:3])


def test_bench_ttft_llava_row(tmp_path):
    from lf_ext.bench.ttft import run_bench_ttft

    (row,) = run_bench_ttft(tmp_path / "ttft.json", shapes=("tiny",), sizes=(336,), fractions=(0.2,), runs=1, warmup=0,
                            checkpoints=tmp_path / "ckpt", arch="llava")  # fmt: skip
    assert row["arch"] == "llava" and row["units"] == 576 and abs(row["object_fraction"] - 0.2) < 0.02
    assert row["hit_prefill_tokens"] < row["prompt_tokens"] and row["limit_ms"] <= row["hit_ms"]


def test_bench_video_options_tokens_and_latency_rows(tmp_path):
    """Each video option's row on the tiny shape: token counts follow the streams (pooling quarters them,
    extra scales add, all together fewest) and every variant is timed."""
    from lf_ext.bench.video_options import VARIANTS, measure_ttft
    from lf_ext.scenes.video import generate_video_scenes

    scenes = tmp_path / "scenes"
    generate_video_scenes(scenes, num_cameras=1, clips_per_camera=2, frames=8, image_size=(112, 112), progress=False)
    clip = str(next((scenes / "clips").glob("*.mp4")))
    rows = {r["variant"]: r for r in measure_ttft("tiny", tmp_path / "ckpt", clip, 112, runs=1, warmup=0)}
    assert list(rows) == list(VARIANTS)
    stock = rows["stock"]["visual_tokens"]
    assert rows["pool2"]["visual_tokens"] == stock // 4 and rows["scales"]["visual_tokens"] > stock
    assert rows["all"]["visual_tokens"] == min(r["visual_tokens"] for r in rows.values())
    assert all(r["ttft_ms"] > 0 and r["tokens_vs_stock"] == r["visual_tokens"] / stock for r in rows.values())


def test_budget_accuracy_rows_pair_each_method_with_stock_and_random():
    from lf_ext.bench.budget import accuracy_rows

    stock = [True] * 6 + [False] * 4
    outcomes = {("stock", 1.0): stock, ("budget", 0.3): [True] * 4 + [False] * 6, ("random", 0.3): [True] * 5 + [False] * 5,
                ("v2", 1.0): stock}  # fmt: skip
    rows = {(r["method"], r["alpha"]): r for r in accuracy_rows(outcomes, majority=0.4)}
    assert rows[("stock", 1.0)]["majority_baseline"] == 0.4 and "vs_stock" not in rows[("stock", 1.0)]
    budget = rows[("budget", 0.3)]
    assert budget["accuracy"] == 0.4 and budget["vs_stock"]["difference"] == pytest.approx(-0.2)
    assert budget["vs_random"]["difference"] == pytest.approx(-0.1) and budget["vs_stock"]["p_value"] == 0.5
    assert "vs_random" not in rows[("random", 0.3)] and "vs_random" not in rows[("v2", 1.0)]  # no random at alpha 1
