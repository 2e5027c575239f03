"""The README's GPU-hours table: ``lf-ext eval-cost`` on stand-in records with each benchmark's typical image
size and prompt length (blank images; the assumptions are the table's ``assumed`` column), with the settings
of the ``yaml/eval`` recipes, per 1,000 samples and three configurations.

    .venv/bin/python scripts/eval_cost_on_paper.py [--gpu a100] [--json work/eval/cost_on_paper.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from PIL import Image

import yaml
from lf_ext.eval.cost import estimate
from lf_ext.eval.datasets import read_records

ROOT = Path(__file__).resolve().parents[1]
# task: (image size, images or frames, prompt characters, answer characters, what it stands for)
TASKS = {
    "gqa": ((500, 375), 1, 120, 6, "Visual Genome photo ~500x375, short question, one-word answer"),
    "ocrvqa": ((330, 500), 1, 120, 12, "book cover ~330x500, short question and answer"),
    "mmmu": ((800, 600), 1, 900, 1, "one ~800x600 figure, question with options, a letter"),
    "androidcontrol": ((1080, 2400), 1, 1200, 60, "1080x2400 screenshot, goal + history, a JSON action"),
    "seedbench": ((640, 360), 8, 300, 1, "8 released frames ~640x360, question with options, a letter"),
}


def stand_in(root: Path, task: str) -> list[dict]:
    (size, count, prompt, answer, _) = TASKS[task]
    Image.new("RGB", size).save(root / f"{task}.png")
    frames = [f"{task}.png"] * count
    placeholder, media = ("<video>", {"videos": [frames]}) if task == "seedbench" else ("<image>", {"images": frames})
    record = {"messages": [{"role": "user", "content": placeholder + "q" * prompt},
                           {"role": "assistant", "content": "a" * answer}], **media}  # fmt: skip
    tags = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}
    columns = {"messages": "messages", "images": "images", "videos": "videos"}
    (root / "dataset_info.json").write_text(json.dumps({task: {"file_name": f"{task}.json", "formatting": "sharegpt",
                                                               "columns": columns, "tags": tags}}))  # fmt: skip
    (root / f"{task}.json").write_text(json.dumps([record]))
    return read_records(root, task)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", default="a100")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows = []
    print(f"{'recipe':<30}{'visual':>8}{'text':>6}{'vision ms':>10}{'prefill ms':>11}{'decode ms':>10}{'GPU-h/1k':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in sorted((ROOT / "yaml" / "eval").glob("*.yaml")):
            values = yaml.safe_load(recipe.read_text())
            model, task = recipe.stem.rsplit("_", 1)
            extra = values.get("args") or {}
            configs = len(values["configs"].split(","))
            row = estimate(stand_in(Path(tmp), task), tmp, model, gpu=args.gpu, configs=configs,
                           image_max_pixels=values["image_max_pixels"],
                           video_max_pixels=extra.get("video_max_pixels", 256 * 256),
                           video_maxlen=extra.get("video_maxlen", 128), max_new_tokens=values["max_new_tokens"],
                           frames_as_images=values.get("frames_as_images"))  # fmt: skip
            per_1k = row["gpu_hours"] * 1000
            rows.append({"recipe": recipe.stem, "assumed": TASKS[task][4], "gpu_hours_per_1000": per_1k, **row})
            tok, sec = row["mean_tokens"], row["seconds_per_sample"]
            print(f"{recipe.stem:<30}{tok['visual']:>8.0f}{tok['text']:>6.0f}{sec['vision'] * 1e3:>10.1f}"
                  f"{sec['prefill'] * 1e3:>11.1f}{sec['decode'] * 1e3:>10.1f}{per_1k:>10.3f}")  # fmt: skip
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
