"""``lf-ext bench train``: training step time of ``qwen2_vl_bgobj`` against ``qwen2_vl`` on the same model and data."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from lf_ext.bench.report import machine_info, print_table, write_json
from lf_ext.adaptation import cli_env


def train_args(model: Path, scenes: Path, out: Path, template: str, steps: int, batch: int, image_px: int) -> dict:
    args = dict(model_name_or_path=str(model), template=template, stage="sft", do_train=True, finetuning_type="full",
                freeze_vision_tower=False, dataset="scenes_train", dataset_dir=str(scenes), cutoff_len=2048,
                image_max_pixels=image_px * image_px, max_samples=steps * batch, preprocessing_num_workers=1,
                dataloader_num_workers=0, overwrite_cache=True, output_dir=str(out), overwrite_output_dir=True,
                save_strategy="no", logging_steps=1000, report_to="none", per_device_train_batch_size=batch,
                max_steps=steps, learning_rate=1e-4, seed=0)  # fmt: skip
    if template.endswith("_bgobj"):
        args["bgobj_mask_provider"] = "dataset"
    return args


def time_steps(args: dict, workdir: Path) -> list[float]:
    """Per-step seconds of one training run in a fresh process."""
    args_file, out_file = workdir / "args.json", workdir / "steps.json"
    args_file.write_text(json.dumps(args))
    proc = subprocess.run([sys.executable, "-m", "lf_ext.bench.step_timer", str(args_file), str(out_file)],
                          env=cli_env(), capture_output=True, text=True)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"training failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return json.loads(out_file.read_text())["step_seconds"]


def run_bench_train(json_out: str | Path, shapes=("tiny", "small"), steps: int = 8, warmup: int = 2,
                    batch: int = 2, image_px: int = 448, scenes_dir: str | Path | None = None) -> list[dict]:  # fmt: skip
    from lf_ext.scenes import generate_scenes
    from lf_ext.tiny.checkpoint import build_checkpoint

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        scenes = Path(scenes_dir) if scenes_dir else tmp / "scenes"
        if not (scenes / "dataset_info.json").exists():
            generate_scenes(scenes, progress=False)
        for shape in shapes:
            model = build_checkpoint("qwen2_vl", tmp / shape, seed=0, shape=shape)
            medians = {}
            for template in ("qwen2_vl", "qwen2_vl_bgobj"):
                times = time_steps(train_args(model, scenes, tmp / f"out_{shape}", template, steps, batch, image_px), tmp)
                medians[template] = statistics.median(times[warmup:])
                print(f"{shape} {template}: median step {medians[template] * 1000:.0f} ms over {len(times) - warmup} steps")
            rows.append({"shape": shape, "batch": batch, "image_px": image_px, "steps_timed": steps - warmup,
                         "stock_step_ms": medians["qwen2_vl"] * 1000, "bgobj_step_ms": medians["qwen2_vl_bgobj"] * 1000,
                         "ratio": medians["qwen2_vl_bgobj"] / medians["qwen2_vl"]})  # fmt: skip
    print(f"\ntraining step time, qwen2_vl_bgobj vs qwen2_vl (full fine-tuning, batch {batch}, {image_px} px scenes)")
    print_table(rows, [("shape", "{}"), ("stock_step_ms", "{:.0f}"), ("bgobj_step_ms", "{:.0f}"), ("ratio", "{:.3f}")])
    write_json(json_out, {"benchmark": "train", "machine": machine_info(), "goal_ratio": 1.15, "rows": rows})
    return rows
