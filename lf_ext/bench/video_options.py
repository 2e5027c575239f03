"""``lf-ext bench video-options``: what each ``bgobj_video_*`` option costs and buys, against stock, same run.

For stock (the ``qwen2_vl`` template, no option), each option alone (2-D pooling at stride 2, extra scales
0.75 and 0.5, fast/slow streams at their defaults) and all together, on clips of the synthetic video scenes
(``lf-ext scenes --video``):

- **visual tokens per clip** (the mean over the test clips);
- **first-token latency** of one clip on random ``tiny`` and ``small`` models (tower + prefill to the first
  token's logits, medians of ``runs`` after ``warmup``; the processor's work excluded);
- **training step time** of full fine-tuning on the video training split (medians after ``warmup`` steps,
  a fresh process per configuration);
- with ``--accuracy``, exact match on the video QA test split after the same budget of steps
  (:mod:`lf_ext.bench.variants`: one stock base, the same extra steps per variant), with 95 % intervals and
  paired differences to stock.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from lf_ext.bench.report import machine_info, print_table, write_json

VARIANTS = {
    "stock": {},
    "pool2": {"bgobj_video_pool_stride": 2},
    "scales": {"bgobj_video_scales": "1.0,0.75,0.5"},
    "fast_slow": {"bgobj_video_fast_slow": True},
    "all": {"bgobj_video_pool_stride": 2, "bgobj_video_scales": "1.0,0.75,0.5", "bgobj_video_fast_slow": True},
}
QUESTION = "What moves in the video?"


def _video_data(side: int) -> dict:
    # the video processor's own min_pixels upscales small frames: clips need a long cutoff (as bench accuracy)
    return dict(image_max_pixels=side * side, video_max_pixels=side * side, cutoff_len=4096)


def measure_ttft(shape: str, checkpoints: Path, clip: str, side: int, runs: int, warmup: int) -> list[dict]:
    """Visual tokens and first-token latency of ``clip`` per variant on a random ``shape`` model."""
    from lf_ext.bench.ttft import checkpoint, load, timed_first_token
    from lf_ext.bench.video import stock_video_ttft
    from lf_ext.eval.prompts import encode_request
    from lf_ext.layout import LAYOUT_KEY, ImageLayout
    from lf_ext.pooling import pool_layout_tokens

    model_dir = checkpoint(shape, checkpoints)
    rows = []
    for name, keys in VARIANTS.items():
        loaded = load(model_dir, side, "float32", template="qwen2_vl", video_max_pixels=side * side, **keys)
        # the template of the load's own arguments (stock qwen2_vl, with the variant's keys bound: the plain plugin)
        request = encode_request(loaded.bgobj_template, loaded.tokenizer, loaded.processor, QUESTION, [], videos=[clip])
        model, family, ids = loaded.model, loaded.family, request["inputs"]
        if name == "stock":
            tokens = int((ids == int(model.config.video_token_id)).sum())
            timed = lambda: stock_video_ttft(loaded, request)  # noqa: E731
        else:
            layout = ImageLayout.unpack(request[LAYOUT_KEY])
            tokens = layout.n_tokens()
            encode = lambda: pool_layout_tokens(family.encode(model, request["pixel_values"], layout), layout)  # noqa: E731
            timed = lambda: timed_first_token(loaded, ids, encode, family.image_token_id(model.config),  # noqa: E731
                                              lambda: family.positions(model, ids, layout))  # fmt: skip
        samples = [timed()["total"] for _ in range(warmup + runs)][warmup:]
        rows.append({"shape": shape, "variant": name, "visual_tokens": tokens, "ttft_ms": statistics.median(samples)})
        print(f"  {shape} {name}: {tokens} visual tokens, TTFT {rows[-1]['ttft_ms']:.0f} ms", flush=True)
        del loaded
    stock = rows[0]
    for row in rows:
        row["tokens_vs_stock"] = row["visual_tokens"] / stock["visual_tokens"]
        row["ttft_vs_stock"] = row["ttft_ms"] / stock["ttft_ms"]
    return rows


def measure_steps(shape: str, scenes: Path, work: Path, side: int, steps: int, warmup: int) -> list[dict]:
    """Median training step time per variant (full fine-tuning, batch 1) on the video training split."""
    from lf_ext.bench.train import time_steps, train_args
    from lf_ext.tiny.checkpoint import build_checkpoint

    model = build_checkpoint("qwen2_vl", work / f"model_{shape}", seed=0, shape=shape)
    rows = []
    for name, keys in VARIANTS.items():
        args = train_args(model, scenes, work / "out", "qwen2_vl", steps, 1, side)
        args.update(dataset="video_train", **_video_data(side), **keys)
        times = time_steps(args, work)
        rows.append({"shape": shape, "variant": name, "step_ms": statistics.median(times[warmup:]) * 1000})
        print(f"  {shape} {name}: median step {rows[-1]['step_ms']:.0f} ms", flush=True)
    for row in rows:
        row["step_vs_stock"] = row["step_ms"] / rows[0]["step_ms"]
    return rows


def measure_accuracy(scenes: Path, work: Path, side: int, base_steps: int, extra_steps: int) -> list[dict]:
    from lf_ext.bench.variants import variant_outcomes
    from lf_ext.eval.stats import accuracy_row, paired_difference

    outcomes, majority = variant_outcomes(scenes, "video_train", "video_test", work, VARIANTS, base_steps, extra_steps,
                                          _video_data(side))  # fmt: skip
    rows = []
    for name, correct in outcomes.items():
        rows.append({"variant": name, **accuracy_row(correct), **({"majority_baseline": majority} if name == "stock" else
                                                                   {"vs_stock": paired_difference(correct, outcomes["stock"])})})  # fmt: skip
    return rows


def run_bench_video_options(json_out: str | Path, shapes=("tiny", "small"), side: int = 224, runs: int = 3, warmup: int = 1,
                            steps: int = 6, step_warmup: int = 2, checkpoints: str | Path = "work/bench/checkpoints",
                            accuracy: bool = False, dataset_dir: str | Path | None = None, workdir: str | Path = "work/bench/video_options",
                            base_steps: int = 600, extra_steps: int = 200, timing: bool = True) -> dict:  # fmt: skip
    from lf_ext.bench.variants import signed
    from lf_ext.eval.runner import load_records
    from lf_ext.scenes.video import generate_video_scenes

    torch.manual_seed(0)
    started = time.perf_counter()
    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    scenes = Path(dataset_dir).resolve() if dataset_dir else work / "scenes"
    if not (scenes / "dataset_info.json").is_file():
        generate_video_scenes(scenes, image_size=(side, side), progress=False)
    clip = str(scenes / load_records(scenes, "video_test")[0]["videos"][0])
    ttft, steps_rows = [], []
    for shape in shapes if timing else ():
        ttft += measure_ttft(shape, Path(checkpoints), clip, side, runs, warmup)
        with tempfile.TemporaryDirectory(dir=work) as tmp:
            steps_rows += measure_steps(shape, scenes, Path(tmp), side, steps, step_warmup)
    if timing:
        print(f"\nvisual tokens and first-token latency of one {side}-px clip (medians of {runs} after {warmup} warm-up)")
        print_table(ttft, [("shape", "{}"), ("variant", "{}"), ("visual_tokens", "{}"), ("tokens_vs_stock", "{:.2f}"),
                           ("ttft_ms", "{:.0f}"), ("ttft_vs_stock", "{:.2f}")])  # fmt: skip
        print(f"\ntraining step time (full fine-tuning, batch 1, video_train; medians after {step_warmup} warm-up steps)")
        print_table(steps_rows, [("shape", "{}"), ("variant", "{}"), ("step_ms", "{:.0f}"), ("step_vs_stock", "{:.2f}")])
    acc_rows = []
    if accuracy:
        acc_rows = measure_accuracy(scenes, work / "accuracy", side, base_steps, extra_steps)
        majority = acc_rows[0]["majority_baseline"]
        print(f"\nexact match on {acc_rows[0]['n']} video test questions after {base_steps} stock steps + {extra_steps} steps "
              f"per variant (majority-answer baseline {majority:.1%})")  # fmt: skip
        print_table([{**r, "ci": f"[{r['ci_low']:.1%}, {r['ci_high']:.1%}]", "minus_stock": signed(r.get("vs_stock"))}
                     for r in acc_rows], [("variant", "{}"), ("accuracy", "{:.1%}"), ("ci", "{}"), ("minus_stock", "{}")])  # fmt: skip
    payload = {"benchmark": "video-options", "machine": machine_info(), "variants": VARIANTS, "clip_px": side, "runs": runs,
               "ttft": ttft, "steps": steps_rows, "accuracy": acc_rows, "seconds": time.perf_counter() - started}  # fmt: skip
    write_json(json_out, payload)
    return payload
