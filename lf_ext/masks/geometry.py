"""Where each visual token's pixels come from, for each model family.

A *token unit* is the square of pixels one visual token stands for at the processor's geometry:
28x28 for Qwen2-VL/Qwen2.5-VL (14-px patches merged 2x2), 14x14 for LLaVA-1.5. The functions here
mirror LLaMA-Factory's ``_preprocess_image`` followed by the Hugging Face image processor, so a mask
drawn on the original image lands on the same units as the model's tokens (tests check this against
the real processors).

Coverage rule: masks are resized with area averaging and a pixel at the processor's geometry is
object when at least half covered; a unit's coverage is the fraction of its pixels that are
object, and the unit is *object* when coverage > ``threshold``. The default threshold 0
makes any unit touched by the object an object unit, so background units hold no object pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

# LLaMA-Factory's defaults for image_max_pixels / image_min_pixels (hparams/model_args.py)
LF_MAX_PIXELS = 768 * 768
LF_MIN_PIXELS = 32 * 32


@dataclass(frozen=True)
class TokenGrid:
    """The path from an original image to its token units.

    Args:
        steps: successive (width, height) resize targets.
        crop: (left, top, right, bottom) cropped from the last resize, or None.
        unit: token unit side in pixels at the final geometry.
        pad: (left, top, right, bottom) added after the first step (LLaVA-1.5's pad-to-square), or None;
            pictures are padded with ``pad_fill``, masks with 0 (background).
    """

    original: tuple[int, int]
    steps: tuple[tuple[int, int], ...]
    crop: tuple[int, int, int, int] | None
    unit: int
    pad: tuple[int, int, int, int] | None = None
    pad_fill: tuple[int, int, int] = (0, 0, 0)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the image the vision tower sees."""
        if self.crop:
            left, top, right, bottom = self.crop
            return right - left, bottom - top
        return self.steps[-1] if self.steps else self.original

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of token units."""
        width, height = self.size
        return height // self.unit, width // self.unit

    @property
    def num_units(self) -> int:
        rows, cols = self.shape
        return rows * cols

    def to_geometry(self, picture: Image.Image) -> Image.Image:
        """Resize/crop a picture of the original's size as the processor does (masks: mode "L")."""
        if picture.size != self.original:
            raise ValueError(f"expected a picture of size {self.original}, got {picture.size}")
        is_mask = picture.mode in ("L", "F", "1")
        resample = Image.BOX if is_mask else Image.BICUBIC
        for index, size in enumerate(self.steps):
            if picture.size != size:
                picture = picture.resize(size, resample)
            if index == 0 and self.pad:
                picture = _padded(picture, self.pad, 0 if is_mask else self.pad_fill)
        return picture.crop(self.crop) if self.crop else picture


def _padded(picture: Image.Image, pad: tuple[int, int, int, int], fill) -> Image.Image:
    left, top, right, bottom = pad
    canvas = Image.new(picture.mode, (picture.width + left + right, picture.height + top + bottom), fill)
    canvas.paste(picture, (left, top))
    return canvas


def _lf_preprocess_size(width: int, height: int, max_pixels: int, min_pixels: int) -> tuple[int, int]:
    """LLaMA-Factory's ``BasePlugin._preprocess_image`` size arithmetic."""
    if width * height > max_pixels:
        factor = math.sqrt(max_pixels / (width * height))
        width, height = int(width * factor), int(height * factor)
    if width * height < min_pixels:
        factor = math.sqrt(min_pixels / (width * height))
        width, height = int(width * factor), int(height * factor)
    return width, height


def _check_size(width: int, height: int) -> None:
    if width < 1 or height < 1:
        raise ValueError(f"image has an empty side ({width}x{height})")


def qwen2_vl_grid(width: int, height: int, *, image_max_pixels: int = LF_MAX_PIXELS,
                  image_min_pixels: int = LF_MIN_PIXELS, min_pixels: int = 56 * 56,
                  max_pixels: int = 28 * 28 * 1280, patch_size: int = 14, merge_size: int = 2) -> TokenGrid:  # fmt: skip
    """Qwen2-VL/Qwen2.5-VL: LF resize, LF's 28-px floor and 200:1 clamp, then ``smart_resize``."""
    _check_size(width, height)
    steps = [_lf_preprocess_size(width, height, image_max_pixels, image_min_pixels)]
    w, h = steps[-1]
    if min(w, h) < 28:
        steps.append((max(w, 28), max(h, 28)))
    w, h = steps[-1]
    if w / h > 200:
        steps.append((h * 180, h))
    elif h / w > 200:
        steps.append((w, w * 180))
    w, h = steps[-1]
    factor = patch_size * merge_size
    h_bar, w_bar = _smart_resize(h, w, factor, min_pixels, max_pixels)
    steps.append((w_bar, h_bar))
    return TokenGrid(original=(width, height), steps=tuple(steps), crop=None, unit=factor)


def _smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """The Qwen2-VL image processor's ``smart_resize`` (transformers 5.6)."""
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return max(h_bar, factor), max(w_bar, factor)


def llava_grid(width: int, height: int, *, image_max_pixels: int = LF_MAX_PIXELS,
               image_min_pixels: int = LF_MIN_PIXELS, shortest_edge: int = 336, crop_size: int = 336,
               patch_size: int = 14, pad_fill: tuple[int, int, int] | None = None) -> TokenGrid:  # fmt: skip
    """LLaVA-1.5 (llava-hf): LF resize, [pad to a square with ``pad_fill``, as ``image_aspect_ratio: pad``
    and ``LlavaImageProcessor(do_pad=True)`` do], shortest edge to 336, then a centred 336x336 crop."""
    _check_size(width, height)
    steps = [_lf_preprocess_size(width, height, image_max_pixels, image_min_pixels)]
    w, h = steps[-1]
    pad = None
    if pad_fill is not None and w != h:
        side = max(w, h)
        left, top = (side - w) // 2, (side - h) // 2
        pad, w, h = (left, top, side - w - left, side - h - top), side, side
    short, long = min(w, h), max(w, h)
    new_long = int(shortest_edge * long / short)
    steps.append((shortest_edge, new_long) if w <= h else (new_long, shortest_edge))
    w, h = steps[-1]
    top, left = int((h - crop_size) / 2.0), int((w - crop_size) / 2.0)
    return TokenGrid(original=(width, height), steps=tuple(steps), crop=(left, top, left + crop_size, top + crop_size),
                     unit=patch_size, pad=pad, pad_fill=pad_fill or (0, 0, 0))  # fmt: skip


def unit_coverage(mask: np.ndarray, unit: int) -> np.ndarray:
    """Fraction of object pixels in each token unit; ``mask`` is (H, W) at the final geometry."""
    height, width = mask.shape
    if height % unit or width % unit:
        raise ValueError(f"mask of {width}x{height} is not a whole number of {unit}-px units")
    blocks = mask.astype(np.float32).reshape(height // unit, unit, width // unit, unit)
    return blocks.mean(axis=(1, 3))


def unit_labels(mask: np.ndarray, unit: int, threshold: float = 0.0) -> np.ndarray:
    """Object label (True) per token unit, row-major over (rows, cols): coverage > threshold."""
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"coverage threshold must be in [0, 1), got {threshold}")
    return unit_coverage(mask, unit) > threshold


def grid_for_arch(arch: str, width: int, height: int, image_max_pixels: int = LF_MAX_PIXELS,
                  image_min_pixels: int = LF_MIN_PIXELS) -> TokenGrid:  # fmt: skip
    """The token grid of an image for an architecture name (default processor settings)."""
    if arch in ("qwen2_vl", "qwen2_5_vl"):
        return qwen2_vl_grid(width, height, image_max_pixels=image_max_pixels, image_min_pixels=image_min_pixels)
    if arch == "llava":
        return llava_grid(width, height, image_max_pixels=image_max_pixels, image_min_pixels=image_min_pixels)
    raise ValueError(f"Unknown arch '{arch}'. Valid: qwen2_vl, qwen2_5_vl, llava.")
