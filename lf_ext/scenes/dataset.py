"""Synthetic "shared background plate" VQA dataset in LLaMA-Factory sharegpt format.

Many images share one pixel-identical background plate (room / desk / phone screen)
and differ only in the objects drawn on top, which is what a background cache needs.
See :func:`generate_scenes` for the layout, splits and question rules.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from .backgrounds import BACKGROUND_KINDS, render_background
from .objects import OBJECT_KINDS, PALETTE, ObjectSpec, paint_objects, place_objects

SPLITS: tuple[str, ...] = ("train", "test")
COLORS: tuple[str, ...] = tuple(PALETTE)
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "center")
PROMPT_SUFFIX = " Answer with one word or number."
CENTER_RADIUS = 0.1  # position rule, see position_label
POSITION_MARGIN = 0.04
COVERAGE_RANGE = (0.03, 0.45)  # allowed union-mask fraction of the image
LARGEST_RATIO = 1.25  # multi-object images: largest area / second largest area

_TEMPLATES: dict[str, tuple[str, ...]] = {
    "color": ("What color is {subj}?", "What is the color of {subj}?", "Which color does {subj} have?"),
    "shape": ("What shape is {subj}?", "What is the shape of {subj}?"),
    "position": ("Where is {subj} in the image?", "In which part of the image is {subj}?"),
    "count": ("How many objects are there?", "How many objects are in the image?", "Count the objects in the image."),
    "time": ("What time does the clock show?", "What time is shown on the clock?", "Read the time on the clock."),
    "digit": ("Which digit is shown?", "What digit is on the tile?", "Which number is shown on the tile?"),
    "background": ("What kind of place is the background?", "What type of scene is in the background?"),
}


# --------------------------------------------------------------------------- validation
def _check_int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not low <= int(value) <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value!r}")
    return int(value)


def _validate(num_backgrounds: Any, images_per_background: Any, image_size: Any, seed: Any,
              test_fraction: Any) -> tuple[int, int, int, int, int, float]:
    """Check parameters; return (num_bg, per_bg, width, height, seed, test_fraction)."""
    n_bg = _check_int("num_backgrounds", num_backgrounds, 1, 10_000)
    per_bg = _check_int("images_per_background", images_per_background, 2, 1_000)
    if not isinstance(image_size, (tuple, list)) or len(image_size) != 2:
        raise ValueError(f"image_size must be a (width, height) pair, got {image_size!r}")
    width = _check_int("image width", image_size[0], 64, 4096)
    height = _check_int("image height", image_size[1], 64, 4096)
    seed = _check_int("seed", seed, 0, 2**63 - 1)
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) \
            or not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be a number strictly between 0 and 1, got {test_fraction!r}")
    return n_bg, per_bg, width, height, seed, float(test_fraction)


# --------------------------------------------------------------------------- planning
def _sample_pairs(rng: np.random.Generator) -> list[tuple[str, str]]:
    """1-3 distinct (kind, colour) pairs (mostly 1), at most one clock and one digit."""
    count = int(rng.choice([1, 2, 3], p=[0.6, 0.25, 0.15]))
    while True:
        pairs = [(OBJECT_KINDS[int(rng.integers(len(OBJECT_KINDS)))], COLORS[int(rng.integers(len(COLORS)))])
                 for _ in range(count)]
        kinds = [k for k, _ in pairs]
        if len(set(pairs)) == count and kinds.count("clock") <= 1 and kinds.count("digit") <= 1:
            return pairs


def signature(pairs: list[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """Object signature: sorted tuple of (kind, colour)."""
    return tuple(sorted(pairs))


def plan_background(seed: int, bg_index: int, count: int,
                    test_fraction: float) -> list[tuple[list[tuple[str, str]], str]]:
    """Per-image (pairs, split) for one background.

    Signatures are unique within the background, so the (background, signature)
    combinations of the two splits are disjoint. ``round(count * test_fraction)``
    images (clamped to [1, count - 1]) go to test, so both splits see every plate.
    """
    rng = np.random.default_rng([seed, 2, bg_index])
    seen: set[tuple[tuple[str, str], ...]] = set()
    plans: list[list[tuple[str, str]]] = []
    for _ in range(count * 200):
        pairs = _sample_pairs(rng)
        if signature(pairs) not in seen:
            seen.add(signature(pairs))
            plans.append(pairs)
            if len(plans) == count:
                break
    else:
        raise ValueError(f"could not draw {count} distinct object signatures for one background")
    n_test = min(count - 1, max(1, math.floor(count * test_fraction + 0.5)))
    test = set(rng.choice(count, size=n_test, replace=False).tolist())
    return [(pairs, "test" if j in test else "train") for j, pairs in enumerate(plans)]


# --------------------------------------------------------------------------- questions
def position_label(cx: float, cy: float, width: int, height: int) -> str | None:
    """Position word for a centroid, or ``None`` when it is too close to a boundary.

    With ``u = cx / width - 0.5`` and ``v = cy / height - 0.5`` (image centre = 0)
    and ``r = max(|u|, |v|)``: ``center`` if ``r < 0.1``; otherwise the dominant
    axis decides (``left``/``right`` if ``|u| > |v|`` else ``top``/``bottom``).
    Ambiguous centroids get ``None`` (no position question): ``|r - 0.1| < 0.04``,
    or ``r >= 0.1`` and ``||u| - |v|| < 0.04`` (near a diagonal).
    """
    u, v = cx / width - 0.5, cy / height - 0.5
    r = max(abs(u), abs(v))
    if abs(r - CENTER_RADIUS) < POSITION_MARGIN:
        return None
    if r < CENTER_RADIUS:
        return "center"
    if abs(abs(u) - abs(v)) < POSITION_MARGIN:
        return None
    if abs(u) > abs(v):
        return "left" if u < 0 else "right"
    return "top" if v < 0 else "bottom"


def _ask(rng: np.random.Generator, qtype: str, subj: str = "") -> str:
    options = _TEMPLATES[qtype]
    return options[int(rng.integers(len(options)))].format(subj=subj)


def make_questions(rng: np.random.Generator, objects: list[dict],
                   background_kind: str) -> list[tuple[str, str, str]]:
    """(question_type, question, answer) triples for one image.

    ``objects`` are sorted by area (largest first). Colour/shape/position refer to
    "the object" or, with several objects, "the largest object". Count is asked for
    every multi-object image and ~25% of single-object ones; time/digit whenever a
    clock/digit is present; the background kind for ~35% of images.
    """
    main = objects[0]
    subj = "the largest object" if len(objects) > 1 else "the object"
    out = [("color", _ask(rng, "color", subj), main["color"]), ("shape", _ask(rng, "shape", subj), main["kind"])]
    if main["position"] is not None:
        out.append(("position", _ask(rng, "position", subj), main["position"]))
    if len(objects) > 1 or rng.random() < 0.25:
        out.append(("count", _ask(rng, "count"), str(len(objects))))
    for obj in objects:
        if obj["kind"] == "clock":
            out.append(("time", _ask(rng, "time"), obj["time"]))
        if obj["kind"] == "digit":
            out.append(("digit", _ask(rng, "digit"), str(obj["digit"])))
    if rng.random() < 0.35:
        out.append(("background", _ask(rng, "background"), background_kind))
    return out


# --------------------------------------------------------------------------- rendering
def _object_meta(specs: list[ObjectSpec], stats: list[dict], width: int, height: int) -> list[dict]:
    """Per-object metadata sorted by area, largest first."""
    meta = []
    for spec, st in zip(specs, stats):
        meta.append({"kind": spec.kind, "color": spec.color, "box": st["box"], "area": st["area"],
                     "centroid": st["centroid"], "position": position_label(*st["centroid"], width, height),
                     "digit": spec.digit, "time": spec.time})
    return sorted(meta, key=lambda m: -m["area"])


def render_scene(plate: np.ndarray, pairs: list[tuple[str, str]],
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Place and paint ``pairs`` on ``plate`` until coverage/largest-object rules hold."""
    height, width = plate.shape[:2]
    for _ in range(200):
        specs = place_objects(rng, pairs, width, height)
        if specs is None:
            continue
        image, mask, stats = paint_objects(plate, specs)
        objects = _object_meta(specs, stats, width, height)
        coverage = float((mask > 0).mean())
        clear_largest = len(objects) == 1 or objects[0]["area"] >= LARGEST_RATIO * objects[1]["area"]
        if COVERAGE_RANGE[0] <= coverage <= COVERAGE_RANGE[1] and clear_largest:
            return image, mask, objects
    raise RuntimeError(f"could not lay out objects {pairs} on a {width}x{height} image")


def _records(name: str, split: str, bg_id: str, bg_kind: str, objects: list[dict],
             questions: list[tuple[str, str, str]]) -> list[dict]:
    """One sharegpt record per question for image ``name``."""
    records = []
    for qtype, question, answer in questions:
        records.append({
            "messages": [{"role": "user", "content": f"<image>{question}{PROMPT_SUFFIX}"},
                         {"role": "assistant", "content": answer}],
            "images": [f"images/{split}/{name}.png"],
            "masks": [f"masks/{split}/{name}.png"],
            "meta": {"image_id": name, "split": split, "background_id": bg_id, "background_kind": bg_kind,
                     "sibling_group": f"{split}/{bg_id}", "plate": f"plates/{bg_id}.png",
                     "question_type": qtype, "objects": objects},
        })
    return records


# --------------------------------------------------------------------------- output
def _save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, format="PNG", compress_level=1)  # fast; still deterministic


def dataset_info() -> dict:
    """LLaMA-Factory ``dataset_info.json`` entries for both splits."""
    tags = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}
    return {f"scenes_{split}": {"file_name": f"scenes_{split}.json", "formatting": "sharegpt",
                                "columns": {"messages": "messages", "images": "images"}, "tags": dict(tags)}
            for split in SPLITS}


def _readme(summary: dict) -> str:
    w, h = summary["image_size"]
    counts = ", ".join(f"{s}: {summary['splits'][s]['images']} images / {summary['splits'][s]['records']} records"
                       for s in SPLITS)
    return f"""# Synthetic shared-background scenes

Generated by `lf_ext.scenes.generate_scenes` (seed {summary['seed']}, {w}x{h} px,
{summary['num_backgrounds']} background plates; {counts}).

## Layout
- `plates/<background_id>.png` - the background plate alone (RGB, no objects).
- `images/{{train,test}}/<background_id>_<index>.png` - RGB image = plate + 1-3 objects.
- `masks/{{train,test}}/<same name>.png` - object mask for the image with the same name.
- `scenes_train.json`, `scenes_test.json` - LLaMA-Factory sharegpt records (one question each).
- `dataset_info.json` - registers `scenes_train` and `scenes_test` (use this folder as `dataset_dir`).

## Mask format
Single-channel 8-bit PNG (mode "L") with the same width and height as its image;
nonzero (255) = object pixel, 0 = background. Outside the mask the image is
pixel-identical to its plate.

## Records
`messages` (user `<image>question Answer with one word or number.`, assistant answer),
`images`, `masks` (paths relative to this folder) and `meta`: image_id, split,
background_id, background_kind, sibling_group (`<split>/<background_id>`: images in a
split sharing a plate), plate, question_type (color, shape, position, count, time,
digit, background) and objects (largest first; kind, color, box [x0, y0, x1, y1] with
exclusive x1/y1, area, centroid [cx, cy], position, digit, time).

## Splits
Every plate appears in both splits; a (background_id, object signature) pair - the
signature being the sorted (kind, color) list of the objects - never occurs in both.
"""


def merged_dataset_info(path: Path) -> dict:
    """The scenes' entries added to (or replacing those in) an existing ``dataset_info.json``.

    Other entries keep their place and content, so the scenes can be generated into a LLaMA-Factory
    data folder that registers other datasets too (the repository's ``data/``).
    """
    existing = json.loads(path.read_text()) if path.is_file() else {}
    if not isinstance(existing, dict):
        raise ValueError(f"{path} is not a JSON object of dataset entries")
    return existing | dataset_info()


def _write_outputs(out: Path, records: dict[str, list[dict]], summary: dict) -> None:
    for split in SPLITS:
        (out / f"scenes_{split}.json").write_text(json.dumps(records[split], indent=1) + "\n")
    info = merged_dataset_info(out / "dataset_info.json")
    (out / "dataset_info.json").write_text(json.dumps(info, indent=2) + "\n")
    (out / "README.md").write_text(_readme(summary))


def _summary(out: Path, records: dict[str, list[dict]], bg_ids: list[str], size: tuple[int, int],
             seed: int) -> dict:
    splits = {}
    for split in SPLITS:
        recs = records[split]
        splits[split] = {"images": len({r["images"][0] for r in recs}), "records": len(recs),
                         "question_types": dict(sorted(Counter(r["meta"]["question_type"] for r in recs).items()))}
    files = {"dataset_info": "dataset_info.json", "train": "scenes_train.json", "test": "scenes_test.json",
             "readme": "README.md", "plates": "plates", "images": "images", "masks": "masks"}
    return {"out_dir": str(out), "seed": seed, "image_size": list(size), "num_backgrounds": len(bg_ids),
            "background_ids": bg_ids, "splits": splits, "files": {k: str(out / v) for k, v in files.items()}}


def generate_scenes(out_dir: str | Path, *, num_backgrounds: int = 12, images_per_background: int = 8,
                    image_size: tuple[int, int] = (448, 448), seed: int = 0, test_fraction: float = 0.25,
                    progress: bool = True) -> dict:
    """Write the dataset to ``out_dir`` and return a summary dict.

    Backgrounds cycle through room/desk/screen; ids are ``<kind>_<NNN>`` numbered per
    kind. ``image_size`` is ``(width, height)``. Each background gets
    ``images_per_background`` images with distinct object signatures, split as in
    :func:`plan_background`; ``sibling_group`` is ``"<split>/<background_id>"``.
    Output is byte-identical for the same arguments. Existing files with the same
    names are overwritten, except ``dataset_info.json``, whose other entries are kept
    (:func:`merged_dataset_info`); other files are left alone.
    """
    n_bg, per_bg, width, height, seed, test_fraction = _validate(
        num_backgrounds, images_per_background, image_size, seed, test_fraction)
    out = Path(out_dir)
    for sub in ["plates"] + [f"{d}/{s}" for d in ("images", "masks") for s in SPLITS]:
        (out / sub).mkdir(parents=True, exist_ok=True)
    records: dict[str, list[dict]] = {s: [] for s in SPLITS}
    bg_ids = []
    with tqdm(total=n_bg * per_bg, desc="scenes", unit="img", disable=not progress) as bar:
        for i in range(n_bg):
            kind = BACKGROUND_KINDS[i % len(BACKGROUND_KINDS)]
            bg_id = f"{kind}_{i // len(BACKGROUND_KINDS):03d}"
            bg_ids.append(bg_id)
            plate = render_background(kind, np.random.default_rng([seed, 1, i]), width, height)
            _save_png(plate, out / "plates" / f"{bg_id}.png")
            for j, (pairs, split) in enumerate(plan_background(seed, i, per_bg, test_fraction)):
                name = f"{bg_id}_{j:03d}"
                image, mask, objects = render_scene(plate, pairs, np.random.default_rng([seed, 3, i, j]))
                _save_png(image, out / "images" / split / f"{name}.png")
                _save_png(mask, out / "masks" / split / f"{name}.png")
                questions = make_questions(np.random.default_rng([seed, 4, i, j]), objects, kind)
                records[split].extend(_records(name, split, bg_id, kind, objects, questions))
                bar.update(1)
    summary = _summary(out, records, bg_ids, (width, height), seed)
    _write_outputs(out, records, summary)
    return summary
