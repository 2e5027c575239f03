"""Train a YOLOv8n-seg object segmenter on the synthetic scenes, from scratch, on CPU, offline.

``scenes_to_yolo`` turns a :func:`lf_ext.scenes.generate_scenes` folder into an ultralytics
segmentation dataset (one class, ``object``); ``train_yolo`` trains ``yolov8n-seg.yaml`` on it and
returns the best checkpoint, usable by the ``yolo`` mask provider.

One class rather than the six kinds: the provider only needs the union of all objects, a single
class gets all the training signal, and an object of an unseen kind is still "an object".
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from PIL import Image

from .yolo import import_ultralytics, torch_state_kept

SPLITS: dict[str, str] = {"train": "train", "test": "val"}  # scenes split -> ultralytics split
ARCH = "yolov8n-seg.yaml"  # architecture yaml shipped inside ultralytics: random init, no weights download
TRAIN_IMAGE_BUDGET = 10800  # training images seen by a default run (epochs x train split size)


# --------------------------------------------------------------------------- conversion
def object_polygons(mask: np.ndarray, boxes: list[list[int]], where: str = "mask") -> list[np.ndarray]:
    """One (K, 2) pixel polygon (x, y) per object box: the largest outer contour inside the box.

    Objects never overlap and their boxes are separated by a gap, so a box crop of the union
    mask holds exactly one object.
    """
    import cv2

    polygons = []
    for x0, y0, x1, y1 in boxes:
        crop = np.ascontiguousarray(mask[y0:y1, x0:x1] > 0).astype(np.uint8)
        contours, _ = cv2.findContours(crop, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        if not contours:
            raise ValueError(f"{where}: no object pixels inside box {[x0, y0, x1, y1]}")
        largest = max(contours, key=cv2.contourArea).reshape(-1, 2)
        if len(largest) < 3:  # a 1-2 pixel sliver: use the box corners instead
            largest = np.array([[0, 0], [x1 - x0 - 1, 0], [x1 - x0 - 1, y1 - y0 - 1], [0, y1 - y0 - 1]])
        polygons.append(largest + [x0, y0])
    return polygons


def label_lines(polygons: list[np.ndarray], width: int, height: int) -> list[str]:
    """YOLO segmentation label lines ``0 x1 y1 x2 y2 ...``, pixel centres normalised to [0, 1]."""
    lines = []
    for poly in polygons:
        xy = np.clip((poly + 0.5) / [width, height], 0.0, 1.0)
        lines.append("0 " + " ".join(f"{v:.6f}" for v in xy.reshape(-1)))
    return lines


def scene_images(scenes_dir: Path, split: str) -> dict[str, dict]:
    """``{image path relative to scenes_dir: record meta}`` for one split (records share meta per image)."""
    path = scenes_dir / f"scenes_{split}.json"
    if not path.is_file():
        raise FileNotFoundError(f"not a scenes folder (made by lf_ext.scenes.generate_scenes): {path} is missing")
    images: dict[str, dict] = {}
    for rec in json.loads(path.read_text()):
        images.setdefault(rec["images"][0], rec)
    return images


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # other filesystem, no hard links
        shutil.copyfile(src, dst)


def _convert_split(scenes_dir: Path, out_dir: Path, split: str, yolo_split: str) -> int:
    """Write images/<yolo_split> and labels/<yolo_split> afresh; returns the number of images."""
    img_dir, lbl_dir = out_dir / "images" / yolo_split, out_dir / "labels" / yolo_split
    for stale in (img_dir, lbl_dir):
        shutil.rmtree(stale, ignore_errors=True)
        stale.mkdir(parents=True)
    (out_dir / "labels" / f"{yolo_split}.cache").unlink(missing_ok=True)
    records = scene_images(scenes_dir, split)
    for rel_image, rec in sorted(records.items()):
        mask_path = scenes_dir / rec["masks"][0]
        mask = np.asarray(Image.open(mask_path).convert("L"))
        polygons = object_polygons(mask, [o["box"] for o in rec["meta"]["objects"]], where=str(mask_path))
        name = Path(rel_image).name
        _link_or_copy(scenes_dir / rel_image, img_dir / name)
        lines = label_lines(polygons, mask.shape[1], mask.shape[0])
        (lbl_dir / f"{Path(name).stem}.txt").write_text("\n".join(lines) + "\n")
    return len(records)


def scenes_to_yolo(scenes_dir: str | Path, out_dir: str | Path) -> Path:
    """Convert a scenes folder to an ultralytics segmentation dataset; returns its ``data.yaml``.

    Layout: ``images/{train,val}``, ``labels/{train,val}`` (the scenes' test split is the val
    split) and ``data.yaml`` with one class ``object``. Those folders are rewritten on each call.
    """
    import yaml

    scenes_dir, out_dir = Path(scenes_dir).resolve(), Path(out_dir).resolve()
    if (out_dir / "masks").exists():
        raise ValueError(f"{out_dir} has a 'masks' folder, which ultralytics reads as a semantic dataset")
    for split, yolo_split in SPLITS.items():
        _convert_split(scenes_dir, out_dir, split, yolo_split)
    data = {"path": str(out_dir), "train": "images/train", "val": "images/val", "names": {0: "object"}}
    data_yaml = out_dir / "data.yaml"
    data_yaml.write_text(yaml.safe_dump(data, sort_keys=False))
    return data_yaml


# --------------------------------------------------------------------------- training
@contextlib.contextmanager
def _offline_training(quiet: bool) -> Iterator[None]:
    """Switch off what a training run would otherwise send or fetch; optionally silence ultralytics.

    - ``check_font``: every dataset check (plots or not) fetches Arial.ttf from GitHub when it is
      not in the ultralytics config dir or matplotlib's font list.
    - ``add_integration_callbacks``: usage analytics, Ultralytics Platform streaming (whenever an
      API key is set) and MLflow/Comet/ClearML/DVC/W&B/... loggers (whenever installed).
    """
    from unittest import mock

    import ultralytics.data.utils as data_utils
    import ultralytics.utils.callbacks as callbacks
    import ultralytics.utils.plotting as plotting

    logger = logging.getLogger("ultralytics")
    level = logger.level
    with mock.patch.object(data_utils, "check_font", lambda *a, **k: None), \
            mock.patch.object(plotting, "check_font", lambda *a, **k: None), \
            mock.patch.object(callbacks, "add_integration_callbacks", lambda instance: None):
        if quiet:
            logger.setLevel(logging.WARNING)
        try:
            yield
        finally:
            logger.setLevel(level)


def _threads_callback(num_threads: int) -> Callable[[Any], None]:
    """``on_train_start`` callback overriding the cpu_count - 1 torch threads ultralytics sets with the device."""

    def set_threads(trainer: Any) -> None:
        import torch

        torch.set_num_threads(num_threads)

    return set_threads


def _train_args(data_yaml: Path, out_dir: Path, epochs: int, imgsz: int, batch: int, seed: int,
                progress: bool, **overrides: Any) -> dict[str, Any]:
    """ultralytics ``train`` arguments for a short from-scratch CPU run.

    No AMP (its check would fetch yolo26n.pt; CPU has none anyway), no plots, validation only
    after the last epoch, an optimizer step per batch (``nbs=batch``, small batches: more steps
    in the budget), mosaic for all but the last quarter of the epochs (on the default 72 training
    images mosaic + batch 4 measured IoU 0.73 vs 0.52 without mosaic at batch 8). An explicit
    AdamW keeps ultralytics' SGD bias warmup lr of 0.1 unless ``warmup_bias_lr`` is reset.
    """
    return dict(
        data=str(data_yaml), epochs=epochs, imgsz=imgsz, batch=batch, seed=seed, device="cpu", workers=0,
        amp=False, plots=False, pretrained=False, project=str(out_dir), name="run", exist_ok=True,
        cache="ram", val=False, patience=epochs, verbose=progress, deterministic=False,
        optimizer="AdamW", lr0=0.004, nbs=batch, warmup_epochs=1.0, warmup_bias_lr=0.0, mosaic=1.0,
        close_mosaic=max(1, epochs // 4), max_det=30,
    ) | overrides


def default_epochs(num_train_images: int) -> int:
    """Epochs that make about :data:`TRAIN_IMAGE_BUDGET` training images (150 epochs on the default 72
    training scenes: ~15 min on 2 idle CPU cores, 27 min on one thread; 75 epochs reached IoU 0.79, 150 reach 0.89)."""
    return max(1, round(TRAIN_IMAGE_BUDGET / max(1, num_train_images)))


def train_yolo(scenes_dir: str | Path, out_dir: str | Path, *, epochs: int | None = None, imgsz: int = 256,
               batch: int = 4, seed: int = 0, progress: bool = True, threads: int | None = None,
               **overrides: Any) -> Path:
    """Train ``yolov8n-seg.yaml`` from scratch on the scenes (CPU, offline); returns ``best.pt``.

    Writes the dataset to ``out_dir/dataset`` and the run to ``out_dir/run``. ``epochs=None``
    picks :func:`default_epochs`. ``threads=None`` uses every core (ultralytics alone would use
    cpu_count - 1): 1.5x faster than one thread on an idle 2-core machine, but 3-6x slower than
    one thread while another process keeps a core busy, so pass ``threads=1`` on a shared machine.
    ``overrides`` go to ultralytics' ``train`` unchanged. The provider infers at the same ``imgsz``.
    """
    out_dir = Path(out_dir).resolve()
    data_yaml = scenes_to_yolo(scenes_dir, out_dir / "dataset")
    epochs = epochs or default_epochs(len(list((out_dir / "dataset" / "images" / "train").iterdir())))
    ultralytics = import_ultralytics()
    threads = threads or os.cpu_count() or 1
    start = time.perf_counter()
    with torch_state_kept(threads), _offline_training(quiet=not progress):
        model = ultralytics.YOLO(ARCH)
        model.add_callback("on_train_start", _threads_callback(threads))
        model.train(**_train_args(data_yaml, out_dir, epochs, imgsz, batch, seed, progress, **overrides))
        best = Path(model.trainer.best)
    if not best.is_file():
        raise RuntimeError(f"YOLO training finished without a checkpoint at {best}")
    if progress:
        print(f"yolo: {epochs} epochs at imgsz {imgsz} in {time.perf_counter() - start:.0f}s -> {best}")
    return best


TRAIN_OPTIONS = {  # train_yolo's keyword -> command-line help; defaults come from its signature
    "epochs": "epochs (default: about %d training images' worth, see default_epochs)" % TRAIN_IMAGE_BUDGET,
    "imgsz": "training and inference image size in pixels",
    "batch": "images per optimizer step",
    "seed": "random seed",
    "threads": "torch threads (default: every core; 1 on a shared machine)",
}


def train_defaults() -> dict[str, Any]:
    """``train_yolo``'s own defaults for :data:`TRAIN_OPTIONS` (the tuned recipe), read from its signature."""
    import inspect

    parameters = inspect.signature(_TRAIN_YOLO).parameters
    return {name: parameters[name].default for name in TRAIN_OPTIONS}


def add_train_arguments(parser: Any) -> None:
    """Add ``--epochs --imgsz --batch --seed --threads`` with ``train_yolo``'s defaults (``lf-ext yolo-train``)."""
    for name, default in train_defaults().items():
        shown = "auto" if default is None else default
        parser.add_argument(f"--{name}", type=int, default=default, help=f"{TRAIN_OPTIONS[name]} [{shown}]")


def train_from_args(args: Any) -> Path:
    """``train_yolo(args.scenes, args.out, ...)`` with the :data:`TRAIN_OPTIONS` found on ``args``."""
    return train_yolo(args.scenes, args.out, **{name: getattr(args, name) for name in TRAIN_OPTIONS})


_TRAIN_YOLO = train_yolo  # the function whose defaults the command lines show (tests may replace the module attribute)


def main(argv: list[str] | None = None) -> None:
    """``python -m lf_ext.masks.yolo_train --scenes DIR --out DIR [--epochs N ...]``; prints best.pt."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", required=True, help="folder made by lf_ext.scenes.generate_scenes")
    parser.add_argument("--out", required=True, help="output folder (dataset + run); keep it out of the repo")
    add_train_arguments(parser)
    print(train_from_args(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
