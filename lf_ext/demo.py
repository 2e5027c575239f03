"""The README's demo: tiny checkpoint + synthetic scenes + a ``yaml/`` recipe through ``llamafactory-cli``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from lf_ext.log import get_logger

REPO_ROOT = Path(__file__).resolve().parents[1]
RECIPE = "yaml/tiny/stock_sft.yaml"
logger = get_logger()


def cli_env() -> dict[str, str]:
    """Environment for child ``llamafactory-cli`` runs: this venv's bin first (torchrun lives there)."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("DISABLE_VERSION_CHECK", "1")
    return env


def run_llamafactory(command: str, recipe: str | Path, overrides: dict[str, object], log_file: Path) -> None:
    """Run ``llamafactory-cli COMMAND RECIPE key=value...``; on failure, show the log's tail."""
    args = ["llamafactory-cli", command, str(recipe)] + [f"{k}={v}" for k, v in overrides.items()]
    with open(log_file, "w") as log:
        proc = subprocess.run(args, cwd=REPO_ROOT, env=cli_env(), stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = "".join(log_file.read_text().splitlines(keepends=True)[-30:])
        raise RuntimeError(f"{' '.join(args)} failed (exit {proc.returncode}); log {log_file}:\n{tail}")


def read_losses(output_dir: Path) -> list[float]:
    log = output_dir / "trainer_log.jsonl"
    return [row["loss"] for row in map(json.loads, log.read_text().splitlines()) if "loss" in row]


def run_demo(workdir: str | Path = "work/demo", steps: int | None = None, eval_limit: int | None = None) -> int:
    """Build, train, answer test questions and print a short report."""
    from lf_ext.evaluate import exact_match, load_records, majority_baseline
    from lf_ext.scenes import generate_scenes
    from lf_ext.tiny.checkpoint import build_checkpoint

    work = (REPO_ROOT / workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    checkpoint = build_checkpoint("qwen2_vl", work / "tiny_qwen2_vl", seed=0)
    scenes = work / "scenes"
    if not (scenes / "dataset_info.json").exists():
        generate_scenes(scenes, seed=0)
    logger.info("checkpoint and scenes ready in %.1fs; training %s", time.time() - t0, RECIPE)

    output_dir = work / "stock_sft"
    overrides = {"model_name_or_path": checkpoint, "dataset_dir": scenes, "output_dir": output_dir}
    if steps is not None:
        overrides.update(max_steps=steps, logging_steps=max(1, min(10, steps // 4)))
    t1 = time.time()
    run_llamafactory("train", RECIPE, overrides, work / "train.log")
    losses = read_losses(output_dir)
    train_s = time.time() - t1

    test = load_records(scenes, "scenes_test.json", limit=eval_limit)
    result = exact_match(output_dir, "qwen2_vl", scenes, test)
    baseline = majority_baseline(load_records(scenes, "scenes_train.json"), test)
    _print_report(losses, train_s, result, baseline, time.time() - t0)
    return 0


def _print_report(losses: list[float], train_s: float, result: dict, baseline: float, total_s: float) -> None:
    print("\n=== lf_ext demo: tiny Qwen2-VL, stock template, synthetic scenes ===")
    print(f"training: {RECIPE} via llamafactory-cli, {train_s:.0f}s, loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    print(f"test exact match: {result['accuracy']:.1%} on {result['n']} questions "
          f"(majority-answer baseline {baseline:.1%})")  # fmt: skip
    print(f"{'question type':<16}{'accuracy':>10}{'n':>6}")
    for qtype, (acc, n) in result["per_type"].items():
        print(f"{qtype:<16}{acc:>10.1%}{n:>6}")
    for question, answer, reply in result["examples"][:3]:
        print(f"  Q: {question.strip()}  expected: {answer}  model: {reply!r}")
    print(f"total {total_s:.0f}s")
