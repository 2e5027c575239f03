"""How a user adapts a pretrained VLM, run through ``llamafactory-cli`` (shared by the demo and ``bench accuracy``).

1. *base*: a tiny random Qwen2-VL trained from scratch with the stock template on the train split
   (the stand-in for a pretrained VLM);
2. from base, the same extra budget twice: *stock* continues with the stock template; *bgobj* runs
   stage 1 (bgobj modules, 40 % of the budget) then stage 2 (LoRA, the rest), then
   ``llamafactory-cli export`` merges the adapter.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from lf_ext.log import get_logger
from lf_ext.progress import run_with_progress
from lf_ext.recipes import recipe

# default budget (steps): with 300/100 the tiny base model stays near the answer priors (27.8 % vs a 24.7 %
# majority baseline on the scenes); 1500/500 learns more (36 %) and takes ~9 min on 2 idle cores
BASE_STEPS, EXTRA_STEPS = 1500, 500
CLI = ["llamafactory-cli"]  # the command the children run (tests put a fake one here)
logger = get_logger()


def cli_env() -> dict[str, str]:
    """Environment for child ``llamafactory-cli`` runs: this venv's bin first (torchrun lives there)."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("DISABLE_VERSION_CHECK", "1")
    return env


def run_llamafactory(command: str, recipe: str | Path, overrides: dict[str, object], log_file: Path,
                     desc: str = "") -> None:  # fmt: skip
    """Run ``llamafactory-cli COMMAND RECIPE key=value...`` with its output in ``log_file``.

    A ``train`` shows a progress bar read from ``output_dir/trainer_log.jsonl``; on failure the log's
    path is printed and the RuntimeError holds its tail.
    """
    args = CLI + [command, str(recipe)] + [f"{k}={v}" for k, v in overrides.items()]
    logger.info("running llamafactory-cli %s %s (log: %s)", command, recipe, log_file)
    output_dir = overrides.get("output_dir") if command == "train" else None
    run_with_progress(args, log_file, env=cli_env(), output_dir=output_dir, desc=desc)


def read_losses(output_dir: Path) -> list[float]:
    log = output_dir / "trainer_log.jsonl"
    return [row["loss"] for row in map(json.loads, log.read_text().splitlines()) if "loss" in row]


def train_stage(work: Path, name: str, recipe_name: str, steps: int, **overrides) -> tuple[Path, list[float]]:
    """``llamafactory-cli train yaml/tiny/RECIPE`` for ``steps`` steps into ``work/name``."""
    out = work / name
    overrides = dict(overrides, output_dir=out, max_steps=steps, logging_steps=max(1, min(10, steps // 4)))
    run_llamafactory("train", recipe(f"tiny/{recipe_name}"), overrides, work / f"{name}.log", desc=name)
    return out, read_losses(out)


@dataclass
class Adapted:
    """The checkpoints and loss curves of one adaptation run."""

    base: Path
    stock: Path
    bgobj: Path  # the merged bgobj model
    losses: dict[str, list[float]]


def adapt(work: Path, checkpoint: Path, data: dict[str, object], bgobj_keys: dict[str, object], base_steps: int,
          extra_steps: int, stock_template: str = "qwen2_vl", bgobj_template: str = "qwen2_vl_bgobj") -> Adapted:  # fmt: skip
    """Base, then stock and bgobj (stage 1 + LoRA + export) with the same extra budget.

    ``data`` holds the LLaMA-Factory data keys of the train split (``dataset``, ``dataset_dir``,
    ``image_max_pixels``...); ``bgobj_keys`` the ``bgobj_*`` keys of the bgobj stages.
    """
    stock_data, bgobj_data = dict(data, template=stock_template), dict(data, template=bgobj_template, **bgobj_keys)
    base, base_losses = train_stage(work, "base", "stock_sft.yaml", base_steps, model_name_or_path=checkpoint, **stock_data)
    stock, stock_losses = train_stage(work, "stock", "stock_sft.yaml", extra_steps, model_name_or_path=base, **stock_data)
    stage1_steps = extra_steps * 2 // 5
    stage1, _ = train_stage(work, "stage1", "stage1_projector.yaml", stage1_steps, model_name_or_path=base, **bgobj_data)
    stage2, bgobj_losses = train_stage(work, "stage2_lora", "stage2_lora.yaml", extra_steps - stage1_steps,
                                       model_name_or_path=stage1, **bgobj_data)  # fmt: skip
    merged = work / "merged"
    run_llamafactory("export", recipe("tiny/export.yaml"), dict(model_name_or_path=stage1, adapter_name_or_path=stage2,
                                                                export_dir=merged, template=bgobj_template),
                     work / "export.log")  # fmt: skip
    return Adapted(base, stock, merged, {"base": base_losses, "stock": stock_losses, "bgobj": bgobj_losses})
