"""The README's demo: a stock baseline and the bgobj stages on the synthetic scenes, via ``llamafactory-cli``.

1. a tiny random Qwen2-VL and the scenes; masks from the scenes (or, with ``masks="yolo"``, from a
   YOLO segmenter trained on them first and cached);
2. *base*: the stock template trained from scratch (the stand-in for a pretrained VLM);
3. from base, the same extra budget twice: *stock* continues with the stock template, *bgobj* runs
   stage 1 (bgobj modules) then stage 2 (LoRA), then ``llamafactory-cli export``;
4. both answer the test questions through LLaMA-Factory's ChatModel, the bgobj model twice: every
   image computed in full, and with the background cache holding the other test images'
   backgrounds (``lf-ext bench accuracy``'s forced hits); accuracies and hit counts are printed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from lf_ext.adaptation import BASE_STEPS, EXTRA_STEPS, adapt
from lf_ext.families import family_for_type
from lf_ext.log import get_logger

logger = get_logger()


def mask_settings(work: Path, scenes: Path, masks: str) -> dict[str, str]:
    """``bgobj_*`` keys for the demo's masks: the trained YOLO segmenter (cached) or the dataset's own."""
    if masks == "dataset":
        return {"bgobj_mask_provider": "dataset"}
    weights = work / "yolo" / "best.pt"
    if not weights.exists():
        from lf_ext.masks.yolo_train import train_yolo

        logger.info("training the YOLO segmenter on the scenes (once; cached in %s)", weights.parent)
        trained = train_yolo(scenes, work / "yolo_run")
        weights.parent.mkdir(parents=True, exist_ok=True)
        weights.write_bytes(Path(trained).read_bytes())
    return {"bgobj_mask_provider": "yolo", "bgobj_yolo_weights": str(weights), "bgobj_mask_fallback": "none"}


def eval_mask_settings(keys: dict[str, str], scenes: Path) -> dict[str, str]:
    """At answer time the 'dataset' provider finds the test images' masks through these LF data keys."""
    if keys["bgobj_mask_provider"] != "dataset":
        return keys
    return dict(keys, dataset_dir=str(scenes), dataset="scenes_test", bgobj_mask_fallback="error")


def _no_cache(keys: dict) -> dict:
    """The demo compares answers computed in full; ``lf-ext bench accuracy`` measures the cache's hits."""
    return dict(keys, bgobj_cache=False)


def run_demo(workdir: str | Path = "work/demo", steps: int | None = None, eval_limit: int | None = None,
             masks: str = "dataset", arch: str = "qwen2_vl") -> int:  # fmt: skip
    """Build, train stock and bgobj with the same budget, answer test questions and print a report."""
    from lf_ext.eval.forcing import forced_hits
    from lf_ext.eval.runner import exact_match, load_records, majority_baseline
    from lf_ext.scenes import generate_scenes
    from lf_ext.tiny.checkpoint import build_checkpoint

    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    base_steps, extra = (steps, max(2, steps // 3)) if steps else (BASE_STEPS, EXTRA_STEPS)
    family = family_for_type(arch)
    checkpoint = build_checkpoint(arch, work / f"tiny_{arch}", seed=0)
    scenes = work / "scenes"
    if not (scenes / "dataset_info.json").exists():
        generate_scenes(scenes, seed=0)
    keys = mask_settings(work, scenes, masks)
    adapted = adapt(work, checkpoint, {"dataset_dir": scenes}, keys, base_steps, extra, stock_template=family.stock_template,
                    bgobj_template=family.template)  # fmt: skip
    stock, merged = adapted.stock, adapted.bgobj
    base_losses, stock_losses, bgobj_losses = (adapted.losses[k] for k in ("base", "stock", "bgobj"))
    test = load_records(scenes, "scenes_test", limit=eval_limit)
    results = {
        "stock": exact_match(stock, family.stock_template, scenes, test),
        "bgobj": exact_match(merged, family.template, scenes, test, extra_args=_no_cache(eval_mask_settings(keys, scenes))),
        "bgobj+cache": forced_hits(merged, family.template, scenes, test, eval_mask_settings(keys, scenes), 50176),
    }
    baseline = majority_baseline(load_records(scenes, "scenes_train"), test)
    _print_report(family, base_steps, extra, base_losses, stock_losses, bgobj_losses, results, baseline, keys, time.time() - t0)
    (work / "demo_result.json").write_text(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "examples"}
                                                       for k, v in results.items()}, indent=1))  # fmt: skip
    return 0


def _print_report(family, base_steps, extra, base_losses, stock_losses, bgobj_losses, results, baseline, keys, total_s) -> None:
    print(f"\n=== lf_ext demo: tiny {family.name} on the synthetic scenes ===")
    print(f"base   stock template, {base_steps} steps from random weights: loss {base_losses[0]:.3f} -> {base_losses[-1]:.3f}")
    print(f"stock  base + {extra} steps, stock template ({family.stock_template}): loss -> {stock_losses[-1]:.3f}")
    print(f"bgobj  base + {extra} steps, stage 1 + stage 2 LoRA ({family.template}, masks: {keys['bgobj_mask_provider']}),"
          f" exported: loss -> {bgobj_losses[-1]:.3f}")  # fmt: skip
    columns = ("stock", "bgobj", "bgobj+cache")
    print(f"\n{'question type':<16}{'n':>5}" + "".join(f"{name:>13}" for name in columns))
    for qtype in sorted(results["stock"]["per_type"]):
        n = results["stock"]["per_type"][qtype][1]
        print(f"{qtype:<16}{n:>5}" + "".join(f"{results[name]['per_type'][qtype][0]:>13.1%}" for name in columns))
    print(f"{'all':<16}{results['stock']['n']:>5}" + "".join(f"{results[name]['accuracy']:>13.1%}" for name in columns))
    cached = results["bgobj+cache"]
    print(f"bgobj+cache: answered from a cached, pixel-verified background: {cached['outcomes']['hit']} hits, "
          f"{cached['outcomes']['rejection']} rejections, {cached['outcomes']['miss']} misses, "
          f"{cached['false_hits']} false hits (another background's entry)")  # fmt: skip
    print(f"(majority-answer baseline {baseline:.1%}; exact match, greedy decoding)")
    print(f"total {total_s:.0f}s")
