"""Share of the object's token units each token-budget method keeps, on a scenes test split.

    .venv/bin/python scripts/budget_object_coverage.py [SCENES_DIR] [--alpha 0.3]

A side check of ``lf-ext bench budget --accuracy``: does entropy selection drop the objects the
questions ask about? Each test image goes through the Qwen2-VL image processor (``max_pixels`` =
50176, the bench's ``image_max_pixels``; LLaMA-Factory's own pre-resize is skipped, so the grid can
differ from training's by a unit at the edges); a unit is object when any pixel of the record's mask
falls in it (box-averaged to the unit grid). Prints the mean share of object units kept per method.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def main() -> None:
    from transformers import AutoProcessor

    from lf_ext.families import family_for_type
    from lf_ext.layout import ImageLayout
    from lf_ext.selection import PatchSelection
    from lf_ext.tiny.checkpoint import build_checkpoint

    parser = argparse.ArgumentParser()
    parser.add_argument("scenes", nargs="?", default="work/demo/scenes")
    parser.add_argument("--test", default="scenes_test")
    parser.add_argument("--alpha", type=float, default=0.3)
    args = parser.parse_args()
    root = Path(args.scenes)
    with tempfile.TemporaryDirectory() as tmp:
        processor = AutoProcessor.from_pretrained(build_checkpoint("qwen2_vl", Path(tmp) / "tiny", seed=0))
    processor.image_processor.max_pixels = 50176
    processor.image_processor.size = {"shortest_edge": 3136, "longest_edge": 50176}
    pixels = family_for_type("qwen2_vl").pixel_units(processor.image_processor)
    kept: dict[str, list[float]] = {m: [] for m in ("budget", "v2", "random", "uniform")}
    for record in json.loads((root / f"{args.test}.json").read_text()):
        image = Image.open(root / record["images"][0]).convert("RGB")
        inputs = processor.image_processor(images=[image], return_tensors="pt")
        _, height, width = inputs["image_grid_thw"][0].tolist()
        rows, cols = height // 2, width // 2
        layout = ImageLayout(((1, rows, cols),), torch.zeros(rows * cols, dtype=torch.int8), separated=False)
        units = pixels.units(inputs["pixel_values"], layout, 0)[0]
        mask = np.asarray(Image.open(root / record["masks"][0]).convert("L").resize((cols, rows), Image.BOX)) > 0
        if not mask.any():
            continue
        for method in kept:
            chosen = PatchSelection(method, args.alpha).select_grid(units, np.zeros((rows, cols), bool))
            kept[method].append(float((chosen & mask).sum() / mask.sum()))
    for method, shares in kept.items():
        print(f"{method}: {np.mean(shares):.1%} of the object units kept at alpha {args.alpha} ({len(shares)} images)")


if __name__ == "__main__":
    main()
