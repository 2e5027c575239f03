"""``lf-ext eval``: each converted fixture (built in the dataset's published format by test_convert) answered
end to end by a tiny model, stock and bgobj+cache; stream order, component times, intervals, paired tests."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from test_convert import (
    make_androidcontrol,
    make_gqa,
    make_mmmu,
    make_ocrvqa,
    make_seedbench,
    run,
)

from lf_ext.eval.harness import default_mask_keys, run_eval, stream_order
from lf_ext.eval.metrics import score
from lf_ext.eval.stats import mcnemar, paired_bootstrap, wilson_interval

FIXTURES = {  # task: (builder, converter options, dataset name)
    "gqa": (lambda src: make_gqa(src, extra_questions=2), {"scene_graphs": "val_sceneGraphs.json"}, "gqa_testdev_balanced"),
    "ocrvqa": (make_ocrvqa, {}, "ocrvqa_test"),
    "mmmu": (lambda src: make_mmmu(src) and src, {}, "mmmu_validation"),
    "androidcontrol": (lambda src: make_androidcontrol(src) and src, {}, "androidcontrol_test"),
    "seedbench": (make_seedbench, {}, "seedbench_video"),
}


@pytest.mark.parametrize("task", list(FIXTURES))
def test_eval_end_to_end_on_each_fixture(task, tiny_dir, tmp_path):
    build, options, name = FIXTURES[task]
    out = tmp_path / "converted"
    run(task, build(tmp_path / "src"), out, **options)
    payload = run_eval(task, out, name, tiny_dir("qwen2_vl"), "qwen2_vl_bgobj", tmp_path / "eval.json", configs=("stock", "bgobj+cache"),
                       max_new_tokens=4, infer_dtype="float32", image_max_pixels=50176)  # fmt: skip
    assert json.loads((tmp_path / "eval.json").read_text())["n"] == payload["n"] > 0
    records = [json.loads(line) for line in (out / f"{name}.jsonl").read_text().splitlines()]
    for config in ("stock", "bgobj+cache"):
        summary = payload["summary"][config]
        rows = [sample[config] for sample in payload["samples"]]
        # the reported metric is the task's own score of each reply
        for record, row in zip(records, rows):
            assert {k: v for k, v in score(task, row["prediction"], record).items()} == {
                k: row[k] for k in score(task, row["prediction"], record)}
        metric = summary["metric"]
        assert summary["accuracy"] == pytest.approx(sum(r[metric] for r in rows) / len(rows))
        assert summary["ci_low"] <= summary["accuracy"] <= summary["ci_high"]
        assert all(r["ms"]["ttft"] > 0 and r["ms"]["total"] >= r["ms"]["ttft"] and r["ms"]["load"] > 0 for r in rows)
        assert all(r["ms"]["vision"] > 0 for r in rows if r["outcome"] != "hit")  # a hit may encode no object at all
    stock_rows = [s["stock"] for s in payload["samples"]]
    assert {r["outcome"] for r in stock_rows} == {"uncached"} and all(r["ms"]["lookup"] == 0 for r in stock_rows)
    cached = [s["bgobj+cache"] for s in payload["samples"]]
    if task == "gqa":  # four questions about n1 in stream order: one miss, then hits; the mask was computed once per image
        assert [cached[i]["outcome"] for i in (0, 2, 3, 4)].count("hit") >= 3
        assert all(r["ms"]["lookup"] > 0 for r in cached) and cached[0]["ms"]["mask"] > 0
    if task in ("mmmu", "seedbench"):  # several images / videos: answered, not served by the cache
        assert any(r["outcome"] == "uncached" for r in cached)
    assert set(payload["against_stock"]) == {"bgobj+cache"}


def test_stream_order_groups_screens_and_keeps_their_order():
    records = [{"meta": {"episode_id": 7}, "images": ["a"]}, {"meta": {"image_id": "x"}, "images": ["b"]},
               {"meta": {"episode_id": 7}, "images": ["c"]}, {"images": ["b"]}, {"meta": {"image_id": "x"}, "images": ["d"]},
               {"images": ["b"]}]  # fmt: skip
    assert stream_order(records) == [0, 2, 1, 4, 3, 5]


def test_default_masks_come_from_the_dataset_else_entropy():
    assert default_mask_keys([{"images": ["a"], "boxes": [[]]}], {}) == {"bgobj_mask_provider": "dataset",
                                                                           "bgobj_mask_fallback": "entropy"}  # fmt: skip
    assert default_mask_keys([{"images": ["a"]}], {}) == {"bgobj_mask_provider": "entropy"}
    assert default_mask_keys([{"images": ["a"]}], {"bgobj_mask_provider": "yolo"}) == {"bgobj_mask_provider": "yolo"}


def test_intervals_and_paired_tests_against_hand_computed_values():
    low, high = wilson_interval(8, 10)  # textbook value: 0.490 - 0.943
    assert (round(low, 3), round(high, 3)) == (0.49, 0.943)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(0, 20)[0] == 0.0 and 0.16 < wilson_interval(0, 20)[1] < 0.17
    result = mcnemar([True] * 5 + [False] * 3, [False] * 5 + [False] * 3)  # 5 discordant, all one way: p = 2 / 32
    assert result == {"only_a": 5, "only_b": 0, "p_value": pytest.approx(0.0625)}
    assert mcnemar([True, False], [True, False])["p_value"] == 1.0
    assert mcnemar([True, False, True], [False, True, False])["p_value"] == 1.0  # 2 vs 1: p = 2 * 4/8 -> 1
    assert paired_bootstrap([True] * 10, [True] * 10) == (0.0, 0.0)
    low, high = paired_bootstrap([True] * 30, [False] * 30)
    assert low == high == 1.0
    a = [i % 2 == 0 for i in range(200)]
    b = [i % 4 == 0 for i in range(200)]  # a is right on 50 more questions: +25 pt
    low, high = paired_bootstrap(a, b)
    assert low < 0.25 < high and high - low < 0.2
    with pytest.raises(ValueError, match="differ in length"):
        mcnemar([True], [])
    assert math.isclose(sum(math.comb(5, k) for k in range(6)), 32)


def test_eval_cli_errors_are_one_line(tmp_path, capsys):
    from lf_ext.cli import main

    (tmp_path / "dataset_info.json").write_text(json.dumps({"d": {"file_name": "d.json", "formatting": "sharegpt"}}))
    (tmp_path / "d.json").write_text("[]")
    args = ["eval", "exact", "--dataset-dir", str(tmp_path), "--dataset", "d", "--model", "m", "--template", "qwen2_vl_bgobj",
            "--json", str(tmp_path / "o.json")]  # fmt: skip
    assert main(args + ["--configs", "stock,fast"]) == 2
    assert "unknown configuration 'fast'" in capsys.readouterr().err
    assert main(args + ["--template", "qwen2_vl"]) == 2
    assert "qwen2_vl" in capsys.readouterr().err
    assert main(args) == 2
    assert "dataset 'd' is empty" in capsys.readouterr().err
    assert main(args + ["--arg", "novalue"]) == 2
    assert "--arg takes KEY=VALUE" in capsys.readouterr().err


RECIPES = sorted((Path(__file__).resolve().parents[1] / "yaml" / "eval").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_eval_recipes_parse_into_the_cli_options(recipe):
    """Every ``yaml/eval`` recipe is a valid ``lf-ext eval --config``; the command line wins over the recipe."""
    import yaml
    from lf_ext.cli import _with_eval_config, build_parser
    from lf_ext.config import split_bgobj_args

    values = yaml.safe_load(recipe.read_text())
    args, extra = build_parser().parse_known_args(_with_eval_config(["eval", "--config", str(recipe), "--limit", "7"]))
    assert args.task == values["task"] and args.dataset == values["dataset"] and args.model == values["model"]
    assert args.limit == 7 and args.configs == values["configs"]
    rest, keys = split_bgobj_args(extra)
    assert rest == [] and set(keys) == {k for k in values if k.startswith("bgobj_")}


def test_eval_recipes_cover_three_models_and_five_benchmarks():
    assert len(RECIPES) == 15
    assert {p.stem.rsplit("_", 1)[0] for p in RECIPES} == {"qwen2_vl_2b", "qwen2_5_vl_3b", "llava1_5_7b"}


def test_frames_as_images_spreads_frames_and_rewrites_placeholders():
    from lf_ext.eval.harness import frames_as_images_of

    record = {"messages": [{"role": "user", "content": "<video>Q?"}, {"role": "assistant", "content": "A"}],
              "videos": [[f"f{i}.png" for i in range(8)]]}  # fmt: skip
    out = frames_as_images_of(record, 4)
    assert out["images"] == ["f0.png", "f2.png", "f4.png", "f6.png"] and out["videos"] == []
    assert out["messages"][0]["content"] == "<image><image><image><image>Q?"
    assert frames_as_images_of(dict(record, videos=[["a.png", "b.png"]]), 4)["messages"][0]["content"].count("<image>") == 2
    with pytest.raises(ValueError, match="frame lists.*clip.mp4"):
        frames_as_images_of(dict(record, videos=["clip.mp4"]), 4)


def test_llava_answers_video_questions_from_frames_as_images(tiny_dir, tmp_path):
    """LLaVA-1.5 has no video input: ``frames_as_images`` lets stock and bgobj+cache answer SEED-Bench video questions."""
    out = tmp_path / "converted"
    run("seedbench", make_seedbench(tmp_path / "src"), out)
    payload = run_eval("seedbench", out, "seedbench_video", tiny_dir("llava"), "llava_bgobj", tmp_path / "eval.json",
                       configs=("stock", "bgobj+cache"), max_new_tokens=2, infer_dtype="float32", frames_as_images=2)  # fmt: skip
    assert payload["n"] == 3 and payload["frames_as_images"] == 2
    for config in ("stock", "bgobj+cache"):  # both answered every question through the vision tower
        assert all(s[config]["ms"]["vision"] > 0 and "correct" in s[config] for s in payload["samples"])
    assert {s["bgobj+cache"]["outcome"] for s in payload["samples"]} == {"uncached"}  # two images: not served by the cache


def test_bench_accuracy_reports_intervals_and_paired_tests_per_type():
    from lf_ext.bench.accuracy import intervals_and_tests

    results = {"stock": {"correct": [True, True, False, False]}, "bgobj_miss": {"correct": [True, False, False, True]},
               "bgobj_forced_hits": {"correct": [True, True, True, False]}}  # fmt: skip
    out = intervals_and_tests(results, ["a", "a", "b", "b"])
    assert out["intervals"]["stock"]["ci_low"] == pytest.approx(0.150, abs=1e-3)  # Wilson, 2 of 4
    assert out["intervals"]["stock"]["ci_high"] == pytest.approx(0.850, abs=1e-3)
    forced = out["against_stock"]["bgobj_forced_hits"]
    assert forced["difference"] == 0.25 and (forced["only_a"], forced["only_b"], forced["p_value"]) == (1, 0, 1.0)
    assert out["against_stock"]["bgobj_miss"]["difference"] == 0.0
    assert out["per_type"]["bgobj_miss"]["b"]["accuracy"] == 0.5 and out["per_type"]["stock"]["a"]["n"] == 2
    assert "stock" not in out["against_stock"]
