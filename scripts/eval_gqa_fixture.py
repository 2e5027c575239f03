"""The README's per-component table: ``lf-ext eval gqa`` on a GQA-format folder written here (balanced
questions JSON, images, scene graphs with object boxes; the published format, synthetic pixels), answered by
a random-weight model of a benchmark shape (default the Qwen2-VL-2B shape, built once) under stock, bgobj and
bgobj+cache in stream order: where a hit's time goes. Accuracy means nothing here (random weights).

    .venv/bin/python scripts/eval_gqa_fixture.py [--shape 2b] [--images 4] [--questions 4] [--out work/eval/gqa_2b]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from lf_ext.bench.ttft import checkpoint

SIZE = (500, 375)  # a typical Visual Genome photo


def write_gqa(src: Path, images: int, questions: int, seed: int = 0) -> None:
    """``images`` noisy photos with one box-shaped object each (~20 % of the area), ``questions`` each."""
    rng = np.random.default_rng(seed)
    (src / "images").mkdir(parents=True, exist_ok=True)
    graphs, items = {}, {}
    for i in range(images):
        pixels = rng.integers(0, 255, (SIZE[1], SIZE[0], 3), dtype=np.uint8)
        x, y, w, h = int(rng.integers(0, 250)), int(rng.integers(0, 190)), 224, 168
        pixels[y : y + h, x : x + w] = rng.integers(0, 255, 3, dtype=np.uint8)
        Image.fromarray(pixels).save(src / "images" / f"n{i}.jpg", quality=95)
        graphs[f"n{i}"] = {"width": SIZE[0], "height": SIZE[1], "objects": {
            f"o{i}": {"name": "box", "x": x, "y": y, "w": w, "h": h, "attributes": [], "relations": []}}}  # fmt: skip
        for q in range(questions):
            items[f"{i}{q:02d}"] = {"question": f"What color is the box ({q})?", "imageId": f"n{i}", "answer": "red",
                                    "fullAnswer": "The box is red.", "isBalanced": True,
                                    "annotations": {"question": {"4": f"o{i}"}, "answer": {}, "fullAnswer": {}},
                                    "types": {"structural": "query", "semantic": "attr", "detailed": "color"}}  # fmt: skip
    (src / "testdev_balanced_questions.json").write_text(json.dumps(items))
    (src / "val_sceneGraphs.json").write_text(json.dumps(graphs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="2b")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--questions", type=int, default=4)
    parser.add_argument("--out", default="work/eval/gqa_2b")
    args = parser.parse_args()
    out = Path(args.out)
    write_gqa(out / "src", args.images, args.questions)
    cli = str(Path(sys.executable).with_name("lf-ext"))
    subprocess.run([cli, "data", "convert", "gqa", "--src", str(out / "src"), "--out", str(out / "data"),
                    "--scene-graphs", "val_sceneGraphs.json", "--overwrite", "--no-progress"], check=True)  # fmt: skip
    model = checkpoint(args.shape, "work/bench/checkpoints", "qwen2_vl")
    subprocess.run([cli, "eval", "gqa", "--dataset-dir", str(out / "data"), "--dataset", "gqa_testdev_balanced",
                    "--model", str(model), "--template", "qwen2_vl_bgobj", "--image-max-pixels", str(SIZE[0] * SIZE[1]),
                    "--max-new-tokens", "4", "--infer-dtype", "bfloat16", "--json", str(out / "eval.json"),
                    "--plot", str(out / "eval.png")], check=True)  # fmt: skip


if __name__ == "__main__":
    main()
