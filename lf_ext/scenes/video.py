"""Synthetic fixed-camera video clips with exact per-frame object masks, and questions about them.

Each *camera* is one background plate (room, desk or screen, as the image scenes); each clip on it
shows one or two objects that move in a straight line or appear part-way through. Clips are lossless
H.264 (``yuv444p``, ``crf 0``, PyAV), so a static background decodes to the same pixels in every
frame and every clip of its camera. Written with ``fps`` 2 by default: LLaMA-Factory's default
``video_fps: 2.0`` then samples every frame.

Layout of ``out_dir``::

    clips/<camera>_<n>.mp4          the clip
    clips/<camera>_<n>_masks/       one mask PNG per frame (0000.png ...; 255 = object), the
                                    ``video_masks`` entry of its records
    plates/<camera>.png             the camera's background
    video_train.json, video_test.json, dataset_info.json (entries video_train, video_test)

Questions (``meta.question_type``): ``color`` (of the object that moves or appears), ``shape``,
``direction`` (left/right/up/down, the object's motion), ``corner`` (where it ends: top left, top
right, bottom left, bottom right) and ``count`` (objects in the last frame). Every record carries
``meta.background_id`` / ``sibling_group`` (its camera) and ``meta.clip_id``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from lf_ext.scenes.backgrounds import BACKGROUND_KINDS, render_background
from lf_ext.scenes.objects import PALETTE, ObjectSpec, render_object

SPLITS = ("train", "test")
SHAPES = ("circle", "square", "triangle", "star")
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
SUFFIX = " Answer with one word or two."
QUESTIONS = {
    "color": "What color is the object that {verb}?",
    "shape": "What shape is the object that {verb}?",
    "direction": "In which direction does the {color} {shape} move?",
    "corner": "In which corner of the picture is the {color} {shape} at the end?",
    "count": "How many objects are in the last frame?",
}


@dataclass(frozen=True)
class Track:
    """One object over a clip: what it is, where it starts, how it moves, from which frame it is there."""

    kind: str
    color: str
    size: int
    start: tuple[int, int]  # top-left corner in the first frame it is visible
    step: tuple[int, int]  # pixels per frame
    appears_at: int = 0

    def box(self, frame: int) -> tuple[int, int] | None:
        if frame < self.appears_at:
            return None
        k = frame - self.appears_at
        return self.start[0] + self.step[0] * k, self.start[1] + self.step[1] * k


def write_clip(path: str | Path, frames: list[np.ndarray], fps: int = 2) -> None:
    """Lossless H.264 (``yuv444p``, ``crf 0``): identical input pixels decode identically in every frame."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt, stream.options = "yuv444p", {"crf": "0"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def render_clip(plate: np.ndarray, tracks: list[Track], frames: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Frames (uint8 HxWx3) and masks (uint8 HxW, 255 = object) of ``tracks`` on ``plate``."""
    height, width = plate.shape[:2]
    sprites = [render_object(ObjectSpec(t.kind, t.color, t.size, 0, 0)) for t in tracks]
    pictures, masks = [], []
    for index in range(frames):
        image, mask = plate.copy(), np.zeros((height, width), dtype=bool)
        for track, (rgba, shape) in zip(tracks, sprites):
            at = track.box(index)
            if at is None:
                continue
            x, y = at
            x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + track.size, width), min(y + track.size, height)
            if x0 >= x1 or y0 >= y1:
                continue
            part = shape[y0 - y : y1 - y, x0 - x : x1 - x]
            image[y0:y1, x0:x1][part] = rgba[y0 - y : y1 - y, x0 - x : x1 - x, :3][part]
            mask[y0:y1, x0:x1] |= part
        pictures.append(image)
        masks.append(mask.astype(np.uint8) * 255)
    return pictures, masks


def _plan_clip(rng: np.random.Generator, width: int, height: int, frames: int) -> list[Track]:
    """One moving object, sometimes a second one that appears part-way through."""
    size = int(min(width, height) * rng.uniform(0.16, 0.22))
    direction = list(DIRECTIONS)[int(rng.integers(len(DIRECTIONS)))]
    dx, dy = DIRECTIONS[direction]
    speed = max(1, int((min(width, height) - size) * 0.55 / max(frames - 1, 1)))
    travel = speed * (frames - 1)
    lo_x, hi_x = (travel if dx < 0 else 0), width - size - (travel if dx > 0 else 0)
    lo_y, hi_y = (travel if dy < 0 else 0), height - size - (travel if dy > 0 else 0)
    start = (int(rng.integers(lo_x, max(hi_x, lo_x) + 1)), int(rng.integers(lo_y, max(hi_y, lo_y) + 1)))
    colors = list(PALETTE)
    first = Track(SHAPES[int(rng.integers(len(SHAPES)))], colors[int(rng.integers(len(colors)))], size, start,
                  (dx * speed, dy * speed))  # fmt: skip
    tracks = [first]
    if rng.random() < 0.4:  # a still object appears half-way, away from the first one's path
        for _ in range(20):
            other = Track(SHAPES[int(rng.integers(len(SHAPES)))], colors[int(rng.integers(len(colors)))], size,
                          (int(rng.integers(0, width - size)), int(rng.integers(0, height - size))), (0, 0), frames // 2)  # fmt: skip
            if other.color != first.color and all(_apart(first.box(f), other.start, size) for f in range(frames)):
                tracks.append(other)
                break
    return tracks


def _apart(a: tuple[int, int] | None, b: tuple[int, int], size: int) -> bool:
    return a is None or abs(a[0] - b[0]) >= size + 4 or abs(a[1] - b[1]) >= size + 4


def _corner(track: Track, frames: int, width: int, height: int) -> str:
    x, y = track.box(frames - 1)
    cx, cy = x + track.size / 2, y + track.size / 2
    return f"{'top' if cy < height / 2 else 'bottom'} {'left' if cx < width / 2 else 'right'}"


def _questions(rng: np.random.Generator, tracks: list[Track], frames: int, width: int, height: int) -> list[tuple[str, str, str]]:
    """(question_type, question, answer) for one clip: two of the five kinds."""
    mover = tracks[0]
    direction = next(name for name, (dx, dy) in DIRECTIONS.items() if (np.sign(mover.step[0]), np.sign(mover.step[1])) == (dx, dy))
    subject = tracks[-1] if len(tracks) > 1 and rng.random() < 0.5 else mover
    verb = "appears" if subject.appears_at > 0 else "moves"
    pool = {
        "color": (QUESTIONS["color"].format(verb=verb), subject.color),
        "shape": (QUESTIONS["shape"].format(verb=verb), subject.kind),
        "direction": (QUESTIONS["direction"].format(color=mover.color, shape=mover.kind), direction),
        "corner": (QUESTIONS["corner"].format(color=mover.color, shape=mover.kind), _corner(mover, frames, width, height)),
        "count": (QUESTIONS["count"], str(len(tracks))),
    }
    kinds = rng.choice(list(pool), size=2, replace=False)
    return [(str(k), pool[k][0], pool[k][1]) for k in kinds]


def generate_video_scenes(out_dir: str | Path, *, num_cameras: int = 6, clips_per_camera: int = 6, frames: int = 16,
                          image_size: tuple[int, int] = (224, 224), fps: int = 2, seed: int = 0,
                          test_fraction: float = 0.25, progress: bool = True) -> dict:  # fmt: skip
    """Write the clips, masks, plates and sharegpt records (see the module docstring); deterministic."""
    if num_cameras < 1 or clips_per_camera < 2 or frames < 2 or fps < 1:
        raise ValueError("need num_cameras >= 1, clips_per_camera >= 2, frames >= 2 and fps >= 1")
    width, height = image_size
    if min(width, height) < 64:
        raise ValueError(f"image_size must be at least 64x64, got {image_size}")
    out = Path(out_dir)
    for sub in ("clips", "plates"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    records: dict[str, list[dict]] = {s: [] for s in SPLITS}
    n_test = max(1, round(clips_per_camera * test_fraction))
    with tqdm(total=num_cameras * clips_per_camera, desc="video scenes", unit="clip", disable=not progress) as bar:
        for c in range(num_cameras):
            kind = BACKGROUND_KINDS[c % len(BACKGROUND_KINDS)]
            camera = f"{kind}_{c // len(BACKGROUND_KINDS):03d}"
            plate = render_background(kind, rng, width, height)
            Image.fromarray(plate).save(out / "plates" / f"{camera}.png")
            for n in range(clips_per_camera):
                split = "test" if n >= clips_per_camera - n_test else "train"
                name = f"{camera}_{n}"
                tracks = _plan_clip(rng, width, height, frames)
                pictures, masks = render_clip(plate, tracks, frames)
                write_clip(out / "clips" / f"{name}.mp4", pictures, fps)
                mask_dir = out / "clips" / f"{name}_masks"
                mask_dir.mkdir(exist_ok=True)
                for index, mask in enumerate(masks):
                    Image.fromarray(mask).save(mask_dir / f"{index:04d}.png")
                for qtype, question, answer in _questions(rng, tracks, frames, width, height):
                    records[split].append({
                        "messages": [{"role": "user", "content": f"<video>{question}{SUFFIX}"},
                                     {"role": "assistant", "content": answer}],
                        "videos": [f"clips/{name}.mp4"], "video_masks": [f"clips/{name}_masks"],
                        "meta": {"id": f"{name}_{qtype}", "clip_id": name, "split": split, "background_id": camera,
                                 "sibling_group": f"{split}/{camera}", "plate": f"plates/{camera}.png",
                                 "question_type": qtype, "answer": answer},
                    })  # fmt: skip
                bar.update()
    for split in SPLITS:
        (out / f"video_{split}.json").write_text(json.dumps(records[split], indent=1) + "\n")
    info_path = out / "dataset_info.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    tags = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}
    for split in SPLITS:
        info[f"video_{split}"] = {"file_name": f"video_{split}.json", "formatting": "sharegpt",
                                  "columns": {"messages": "messages", "videos": "videos"}, "tags": dict(tags)}  # fmt: skip
    info_path.write_text(json.dumps(info, indent=2) + "\n")
    return {"out_dir": str(out), "cameras": num_cameras, "clips": num_cameras * clips_per_camera, "frames": frames,
            "image_size": [width, height], "fps": fps, "records": {s: len(r) for s, r in records.items()}}
