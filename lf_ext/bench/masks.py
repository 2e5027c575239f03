"""``lf-ext bench masks``: token-unit IoU against ground truth and latency, per mask provider."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

from lf_ext.bench.report import machine_info, print_table, write_json
from lf_ext.config import parse_bgobj_args
from lf_ext.masks.geometry import qwen2_vl_grid, unit_labels
from lf_ext.masks.pipeline import ObjectMasker


def _test_images(scenes_dir: Path, limit: int | None) -> list[dict]:
    """One entry per unique test image: path, ground-truth mask path and plate."""
    seen: dict[str, dict] = {}
    for record in json.loads((scenes_dir / "scenes_test.json").read_text()):
        image = record["images"][0]
        seen.setdefault(image, {"image": scenes_dir / image, "mask": scenes_dir / record["masks"][0],
                                "plate": scenes_dir / record["meta"]["plate"]})  # fmt: skip
    return list(seen.values())[:limit]


def _iou(pred: np.ndarray, truth: np.ndarray) -> float:
    union = (pred | truth).sum()
    return float((pred & truth).sum() / union) if union else 1.0


def _time_pass(masker: ObjectMasker, name: str, images: list[dict], image_px: int) -> tuple[list[float], list[np.ndarray]]:
    times, labels = [], []
    for item in images:
        image = Image.open(item["image"]).convert("RGB")
        grid = qwen2_vl_grid(*image.size, image_max_pixels=image_px * image_px)
        record = {"mask": str(item["mask"])} if name == "dataset" else {"plate": str(item["plate"])} if name == "reference" else {}
        start = time.perf_counter()
        labels.append(masker.labels(image, grid, source=str(item["image"]), record=record))
        times.append((time.perf_counter() - start) * 1000)
    return times, labels


def bench_provider(name: str, keys: dict, images: list[dict], image_px: int) -> dict:
    """IoU of object units against ground truth; latency cold (first pass) and warm (second pass)."""
    masker = ObjectMasker.from_settings(parse_bgobj_args({"bgobj_mask_provider": name, "bgobj_mask_fallback": "error", **keys}))
    cold, _ = _time_pass(masker, name, images, image_px)
    warm, labels = _time_pass(masker, name, images, image_px)
    ious = []
    for item, predicted in zip(images, labels):
        mask = Image.open(item["mask"]).convert("L")
        grid = qwen2_vl_grid(*mask.size, image_max_pixels=image_px * image_px)
        truth = unit_labels((np.asarray(grid.to_geometry(mask), np.float32) >= 127.5).astype(np.float32), grid.unit)
        ious.append(_iou(predicted, truth))
    return {"provider": name, "images": len(images), "unit_iou_mean": statistics.mean(ious),
            "unit_iou_median": statistics.median(ious), "latency_ms_median": statistics.median(warm),
            "cold_latency_ms_median": statistics.median(cold[1:] or cold), "settings": keys}  # fmt: skip


def run_bench_masks(scenes_dir: str | Path, json_out: str | Path, yolo_weights: str | None = None,
                    limit: int | None = None, image_px: int = 448) -> list[dict]:  # fmt: skip
    scenes_dir = Path(scenes_dir)
    images = _test_images(scenes_dir, limit)
    providers = [("dataset", {}), ("entropy", {"bgobj_entropy_alpha": 0.25}), ("reference", {})]
    if yolo_weights:
        providers.append(("yolo", {"bgobj_yolo_weights": str(yolo_weights)}))
    rows = [bench_provider(name, keys, images, image_px) for name, keys in providers]
    print(f"\nmask providers on {len(images)} held-out scene images at {image_px} px (Qwen2-VL 28-px units)")
    print_table(rows, [("provider", "{}"), ("unit_iou_mean", "{:.3f}"), ("unit_iou_median", "{:.3f}"),
                       ("latency_ms_median", "{:.2f}"), ("cold_latency_ms_median", "{:.2f}")])  # fmt: skip
    print("latency: median per image in the second pass (provider state warm: model loaded, plate cached);"
          " cold: first pass (plates decoded once per background)")
    write_json(json_out, {"benchmark": "masks", "machine": machine_info(), "image_px": image_px,
                          "scenes_dir": str(scenes_dir), "rows": rows})  # fmt: skip
    return rows
