"""A video clip in the separated layout: its static background, and where its units change.

A clip's frames reach the model in temporal slices (Qwen2-VL: 2 frames per slice). Its *background*
B is the units that are background in every frame (the mask) and whose pixels, as the model sees
them, stay within ``bgobj_cache_unit_threshold`` (mean absolute difference, 0-255) of the first
frame's: encoded once, from the first slice, at the first slice's positions (the cacheable prefix).
Every other unit is an object unit: a token in the first slice, then a token in each later slice
where its pixels moved beyond the threshold from its previous token's (the EVS rule, per unit), so a
still object costs one token and a moving one a token where it goes (:func:`~lf_ext.layout.clip_groups`).
A cached background serves a new clip when it verifies against the clip's first slice; the new clip's
own changes still get their tokens, so the next window of a fixed camera (its object somewhere on the
cached clip's path) hits.

Per-frame masks, by provider:

- ``none``/``motion``: no mask; the split comes from the pixel changes alone (the EVS rule, used to split);
- ``reference``: frames compared with a plate (``bgobj_reference_image``, sampled and resized like the
  frames) or, with ``bgobj_reference_image: median``, the clip's own per-pixel temporal median;
- ``dataset``: the record's ``video_masks`` entry for the video: a mask video, a folder of per-frame
  mask PNGs (ordered by the number in their names, one per frame of the video file), or a list of
  mask files parallel to a frame-list video; sampled with the video's own frame indices and resized
  like its frames; >= 128 is object. A video without one falls back as ``bgobj_mask_fallback`` says
  (a fallback of ``none``/``auto`` in training: motion alone);
- any other provider (``yolo``, ``entropy``): each frame through the configured masker.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from lf_ext.layout import clip_groups
from lf_ext.masks.base import MaskError
from lf_ext.masks.geometry import TokenGrid, unit_labels
from lf_ext.masks.reference import open_image
from lf_ext.plugins.image_labels import UnitLabeler

PIXEL_ONLY = ("none", "motion")


class VideoError(MaskError):
    """A clip that cannot be read or laid out (a client's mistake: the API answers 400)."""


@dataclass
class OpenedClip:
    """A clip as the model will see it: LLaMA-Factory's sampled, resized frames (an even count)."""

    frames: list[Image.Image]
    source: str | list | None  # the video file, the frame files, or None
    sample_indices: list[int] | None  # which frames of the video file were sampled (files only)
    original_size: tuple[int, int]  # (width, height) of the video before LLaMA-Factory's resize
    request: int | None = None


class ClipLabeler:
    """Unit groups ``(slices, rows, cols)`` of clips under one command's settings (see the module docstring)."""

    def __init__(self, labeler: UnitLabeler, regularize: Callable[[list[Image.Image]], list[Image.Image]]):
        self.labeler = labeler
        self.settings = labeler.settings
        self.regularize = regularize  # the plugin's own frame resize (plates go through it too)

    def groups(self, clip: OpenedClip, geometry: TokenGrid, frame_units: np.ndarray, temporal: int, where: str) -> torch.Tensor:
        """int8 ``(slices, rows, cols)`` groups of one clip; ``frame_units``: its ``(frames, rows, cols, u, u, 3)``
        pixels as the model sees them."""
        frames = frame_units.shape[0]
        if frames % temporal:
            raise VideoError(f"{where}: {frames} frames do not fill whole temporal slices of {temporal}")
        threshold = self.settings.keys.bgobj_cache_unit_threshold
        objects = self._frame_objects(clip, geometry, frame_units, where)
        static = (_unit_distance(frame_units, frame_units[0]) <= threshold).all(axis=0)
        background = static & ~objects.any(axis=0)
        return clip_groups(torch.from_numpy(background), torch.from_numpy(tokens_on_change(frame_units, temporal, threshold)))

    # ------------------------------------------------------------------ per-frame object masks
    def _frame_objects(self, clip: OpenedClip, geometry: TokenGrid, frame_units: np.ndarray, where: str) -> np.ndarray:
        keys = self.settings.keys
        provider = keys.bgobj_mask_provider
        empty = np.zeros(frame_units.shape[:3], dtype=bool)
        if provider in PIXEL_ONLY:
            return empty
        if provider == "reference":
            return self._against_plate(clip, geometry, frame_units, where)
        if provider == "dataset":
            masks = self._dataset_masks(clip, geometry, where)
            if masks is not None:
                return masks
            fallback = self.labeler.masker().fallback_name
            if fallback == "error":
                raise MaskError(f"{where}: no 'video_masks' entry for this video in the dataset (bgobj_mask_fallback: error)")
            return empty if fallback in PIXEL_ONLY else self._per_frame(clip, geometry, where)  # frames have no path: the fallback
        return self._per_frame(clip, geometry, where)

    def _per_frame(self, clip: OpenedClip, geometry: TokenGrid, where: str) -> np.ndarray:
        """Each frame through the configured masker (its fallback included)."""
        masker = self.labeler.masker()
        try:
            return np.stack([masker.labels(frame, geometry) for frame in clip.frames])
        except MaskError as err:
            raise MaskError(f"{where}: {err}") from None

    def _against_plate(self, clip: OpenedClip, geometry: TokenGrid, frame_units: np.ndarray, where: str) -> np.ndarray:
        """Object where a frame differs from the plate by more than ``bgobj_reference_threshold`` (RGB mean)."""
        keys = self.settings.keys
        frames, rows, cols, u = frame_units.shape[:4]
        pictures = frame_units.transpose(0, 1, 3, 2, 4, 5).reshape(frames, rows * u, cols * u, 3).astype(np.int16)
        if keys.bgobj_reference_image == "median":
            plate = np.median(pictures, axis=0)
        elif keys.bgobj_reference_image:
            image = open_image(keys.bgobj_reference_image, "reference image", where).convert("RGB")
            if image.size != clip.original_size:
                raise MaskError(f"{where}: the reference image is {image.size[0]}x{image.size[1]}, the video "
                                f"{clip.original_size[0]}x{clip.original_size[1]}")  # fmt: skip
            (resized,) = self.regularize([image])
            plate = np.asarray(geometry.to_geometry(resized.convert("RGB")), np.int16)
        else:
            raise MaskError(f"{where}: the reference provider needs bgobj_reference_image (a plate, or 'median')")
        diff = np.abs(pictures - plate).mean(axis=3)
        masks = (diff > keys.bgobj_reference_threshold).astype(np.float32)
        coverage = self.labeler.masker().coverage
        return np.stack([unit_labels(mask, u, coverage) for mask in masks])

    def _dataset_masks(self, clip: OpenedClip, geometry: TokenGrid, where: str) -> np.ndarray | None:
        """Per-frame object labels from the record's ``video_masks`` entry, or None when it has none."""
        from lf_ext.eval.datasets import video_key

        if clip.source is None:
            return None
        provider = self.labeler.masker().provider
        spec = provider.index.get(video_key(clip.source)) if hasattr(provider, "index") else None
        if not spec or "video_mask" not in spec:
            return None
        pictures = _mask_frames(spec["video_mask"], clip, where)
        coverage = self.labeler.masker().coverage
        out = []
        for index, picture in enumerate(pictures):
            if picture.size != clip.original_size:
                raise MaskError(f"{where}: mask frame {index + 1} is {picture.size[0]}x{picture.size[1]}, the video "
                                f"{clip.original_size[0]}x{clip.original_size[1]}")  # fmt: skip
            resized = picture.resize(clip.frames[index].size, Image.NEAREST)
            mask = (np.asarray(geometry.to_geometry(resized), np.float32) >= 128).astype(np.float32)
            out.append(unit_labels(mask, geometry.unit, coverage))
        return np.stack(out)


def tokens_on_change(frame_units: np.ndarray, temporal: int, threshold: float) -> np.ndarray:
    """bool ``(slices, rows, cols)``: True where a unit's slice differs (any of its frames) by more than
    ``threshold`` from the first frame of the slice of the unit's previous token (the first slice's to start)."""
    frames, rows, cols = frame_units.shape[:3]
    slices = frames // temporal
    token_at = np.zeros((slices, rows, cols), dtype=bool)
    token_at[0] = True
    last = np.zeros((rows, cols), dtype=np.int64)  # slice of each unit's previous token
    row, col = np.indices((rows, cols))
    for t in range(1, slices):
        reference = frame_units[last * temporal, row, col]  # (rows, cols, u, u, 3)
        moved = np.zeros((rows, cols), dtype=bool)
        for f in range(t * temporal, (t + 1) * temporal):
            moved |= _unit_distance(frame_units[f][None], reference)[0] > threshold
        token_at[t] = moved
        last[moved] = t
    return token_at


def _unit_distance(frames: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Mean absolute difference (0-255) of each unit of each frame from ``reference``: ``(frames, rows, cols)``."""
    return np.abs(frames.astype(np.int16) - reference.astype(np.int16)).mean(axis=(3, 4, 5))


def _mask_frames(value, clip: OpenedClip, where: str) -> list[Image.Image]:
    """The mask pictures of the clip's frames ("L"), in the clip's frame order."""
    wanted = len(clip.frames)
    if isinstance(value, list):  # parallel to a frame-list video
        if len(value) not in (wanted, wanted - 1):
            raise MaskError(f"{where}: {len(value)} mask files for {wanted} frames")
        files = list(value)
    elif Path(value).is_dir():
        files = sorted((p for p in Path(value).iterdir() if p.suffix.lower() == ".png"), key=_frame_number)
        files = _sampled(files, clip, where, f"mask folder {value}")
    else:
        pictures = _decode_mask_video(value, where)
        return _pad_to(_sampled(pictures, clip, where, f"mask video {value}"), wanted)
    return _pad_to([open_image(f, "mask frame", where).convert("L") for f in files], wanted)


def _sampled(items: list, clip: OpenedClip, where: str, what: str) -> list:
    """The items at the clip's sampled frame indices (all of them for a frame-list video)."""
    indices = clip.sample_indices[: len(clip.frames)] if clip.sample_indices is not None else list(range(len(items)))
    if not items or max(indices) >= len(items):
        raise MaskError(f"{where}: {what} has {len(items)} frames, the video at least {max(indices) + 1}")
    return [items[i] for i in indices]


def _pad_to(pictures: list, count: int) -> list:
    """LLaMA-Factory repeats the last frame of an odd-length clip: so do the masks."""
    return pictures + [pictures[-1]] * (count - len(pictures))


def _frame_number(path: Path) -> tuple[int, str]:
    digits = re.findall(r"\d+", path.stem)
    return (int(digits[-1]) if digits else -1, path.name)


def _decode_mask_video(path: str, where: str) -> list[Image.Image]:
    import av

    try:
        with av.open(str(path), "r") as container:
            stream = next(s for s in container.streams if s.type == "video")
            return [frame.to_image().convert("L") for frame in container.decode(stream)]
    except (OSError, StopIteration, av.FFmpegError) as err:
        raise MaskError(f"{where}: mask video {Path(path).resolve()} cannot be read ({type(err).__name__}: {err})") from None
