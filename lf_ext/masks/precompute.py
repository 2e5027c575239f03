"""``lf-ext masks precompute``: run a provider over a dataset once and save masks for the 'dataset' provider."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image
from tqdm import tqdm

from lf_ext.eval.datasets import read_records
from lf_ext.masks.base import MaskError
from lf_ext.masks.dataset import INDEX_FILE
from lf_ext.masks.geometry import grid_for_arch
from lf_ext.masks.pipeline import ObjectMasker


def dataset_images(dataset_dir: Path, names: Iterable[str]) -> list[str]:
    """Unique image paths (as written in the records) of the named datasets, in order."""
    seen: dict[str, None] = {}
    for name in names:
        for record in read_records(dataset_dir, name):
            for image in record["images"]:
                seen.setdefault(image, None)
    return list(seen)


def mask_path_for(image: str) -> str:
    """Where the mask of a dataset image goes, relative to the output folder."""
    return str(Path(image).with_suffix(".png"))


def precompute_masks(dataset_dir: str | Path, names: list[str], out_dir: str | Path, masker: ObjectMasker,
                     arch: str = "qwen2_vl", image_max_pixels: int = 768 * 768, progress: bool = True) -> dict:  # fmt: skip
    """Write one mask PNG (original size, 255 = object) per image and an ``index.json``; resumable."""
    dataset_dir, out_dir = Path(os.path.abspath(dataset_dir)), Path(out_dir)
    images = dataset_images(dataset_dir, names)
    index, done = {}, 0
    for image_name in tqdm(images, desc="masks", unit="img", disable=not progress):
        target = out_dir / mask_path_for(image_name)
        index[image_name] = mask_path_for(image_name)
        if target.exists():  # resume: earlier runs wrote it
            continue
        source = dataset_dir / image_name
        try:
            with Image.open(source) as image:
                image = image.convert("RGB")
        except (FileNotFoundError, OSError) as err:
            raise MaskError(f"{image_name}: cannot read the image ({err})") from None
        grid = grid_for_arch(arch, *image.size, image_max_pixels=image_max_pixels)
        mask, _ = masker.mask_and_labels(image, grid, source=str(source))
        picture = Image.fromarray(((mask > 0.5) * 255).astype(np.uint8)).resize(image.size, Image.NEAREST)
        target.parent.mkdir(parents=True, exist_ok=True)
        picture.save(target.with_suffix(".tmp.png"))
        target.with_suffix(".tmp.png").replace(target)  # never leave a half-written mask behind
        done += 1
    (out_dir / INDEX_FILE).write_text(json.dumps({"masks": {str(dataset_dir / k): v for k, v in index.items()}}, indent=1))
    return {"images": len(images), "written": done, "skipped": len(images) - done, "index": str(out_dir / INDEX_FILE)}
