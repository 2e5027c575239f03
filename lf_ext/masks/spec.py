"""Object regions given with the data, read with documented semantics: mask files, boxes, polygons.

- **Mask files** (PNG etc., the image's width and height): when the file has an alpha channel that is
  not fully opaque (a cut-out), the alpha channel is the mask; otherwise its grey level is. A pixel
  is object when its value is **>= 128**. Masks are expected to be near-binary: a mask with more than
  1 % of its pixels between 32 and 223 (soft edges are fine, JPEG noise is not) is binarised anyway
  and counted in a warning (the first one names the file, later ones are counted). A colour image
  given as a mask, or a mask that is mostly mid-grey, is an error naming the sample.
- **Boxes**: ``[x0, y0, x1, y1]`` in pixels of the original image, x1/y1 exclusive; parts outside the
  image are clipped; a malformed box, an empty one or one entirely outside the image is an error.
- **Polygons**: lists of at least three ``[x, y]`` points; one entirely outside the image is an error.
"""

from __future__ import annotations

import threading
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from lf_ext.log import get_logger
from lf_ext.masks.base import MaskError
from lf_ext.masks.reference import open_image

OBJECT_LEVEL = 128
SOFT_RANGE = (32, 224)  # grey levels counted as "not binary"
WARN_SOFT_FRACTION = 0.01
UNUSABLE_SOFT_FRACTION = 0.5
COLOUR_TOLERANCE = 8  # max difference between channels of a grey mask stored as RGB


class MaskQuality:
    """Counts of masks that were not near-binary; warns on the first one, then at 10, 100, 1000..."""

    def __init__(self):
        self.soft = 0
        self._lock = threading.Lock()

    def record(self, path: str, sample: str, fraction: float) -> None:
        with self._lock:
            self.soft += 1
            count = self.soft
        if count == 1 or count in (10, 100, 1000, 10000):
            get_logger().warning("%s: mask %s is not binary (%.1f%% of its pixels between %d and %d); binarised at %d "
                                 "(%d such masks so far)", sample, path, 100 * fraction, SOFT_RANGE[0], SOFT_RANGE[1] - 1,
                                 OBJECT_LEVEL, count)  # fmt: skip


def _mask_values(mask: Image.Image, path: str, sample: str) -> np.ndarray:
    """The mask's levels (H, W) uint8: alpha for a cut-out, else grey; colour images are refused."""
    bands = mask.getbands()
    if "A" in bands or (mask.mode == "P" and "transparency" in mask.info):
        alpha = np.asarray(mask.convert("RGBA").getchannel("A"))
        if alpha.min() < 255:
            return alpha
    if len(bands) >= 3 or mask.mode == "P":
        rgb = np.asarray(mask.convert("RGB"), dtype=np.int16)
        if np.abs(rgb - rgb.mean(axis=2, keepdims=True)).max() > COLOUR_TOLERANCE:
            raise MaskError(f"{sample}: mask {path} is a colour image, not a mask (use one channel: 255 = object, "
                            f"0 = background, or an alpha channel)")  # fmt: skip
    return np.asarray(mask.convert("L"))


def read_mask_file(path: str, size: tuple[int, int], sample: str, quality: MaskQuality | None = None) -> Image.Image:
    """A mask file as an "L" image, 255 = object (see the module docstring)."""
    mask = open_image(path, "mask file", sample)
    if mask.size != tuple(size):
        raise MaskError(f"{sample}: mask {path} is {mask.size[0]}x{mask.size[1]}, image is {size[0]}x{size[1]}")
    values = _mask_values(mask, path, sample)
    soft = float(((values >= SOFT_RANGE[0]) & (values < SOFT_RANGE[1])).mean())
    if soft > UNUSABLE_SOFT_FRACTION:
        raise MaskError(f"{sample}: mask {path} is mostly mid-grey ({100 * soft:.0f}% of its pixels between "
                        f"{SOFT_RANGE[0]} and {SOFT_RANGE[1] - 1}): not a mask")  # fmt: skip
    if soft > WARN_SOFT_FRACTION and quality is not None:
        quality.record(path, sample, soft)
    return Image.fromarray(((values >= OBJECT_LEVEL) * 255).astype(np.uint8))


def _numbers(value: Any, count: int) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == count and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in value)  # fmt: skip


def checked_box(box: Any, size: tuple[int, int], sample: str, index: int) -> tuple[float, float, float, float]:
    """A valid box clipped to the image (see the module docstring), or a MaskError naming the sample."""
    width, height = size
    if not _numbers(box, 4):
        raise MaskError(f"{sample}: box {index} is {box!r}; a box is [x0, y0, x1, y1] (four numbers, pixels)")
    x0, y0, x1, y1 = box
    if not (x0 < x1 and y0 < y1):
        raise MaskError(f"{sample}: box {index} {list(box)} is empty or inverted: need x0 < x1 and y0 < y1 "
                        f"(pixels, x1/y1 exclusive)")  # fmt: skip
    if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
        raise MaskError(f"{sample}: box {index} {list(box)} lies entirely outside the {width}x{height} image")
    return max(0, x0), max(0, y0), min(width, x1), min(height, y1)


def checked_polygon(polygon: Any, size: tuple[int, int], sample: str, index: int) -> list[tuple[float, float]]:
    width, height = size
    if not isinstance(polygon, (list, tuple)) or len(polygon) < 3 or not all(_numbers(p, 2) for p in polygon):
        raise MaskError(f"{sample}: polygon {index} must be a list of at least three [x, y] points, got {polygon!r:.120}")
    xs, ys = [p[0] for p in polygon], [p[1] for p in polygon]
    if max(xs) <= 0 or max(ys) <= 0 or min(xs) >= width or min(ys) >= height:
        raise MaskError(f"{sample}: polygon {index} lies entirely outside the {width}x{height} image")
    return [tuple(p) for p in polygon]


def render_spec(spec: Mapping[str, Any], size: tuple[int, int], sample: str, quality: MaskQuality | None = None) -> Image.Image:
    """Draw a mask spec (``mask`` file, ``boxes`` or ``polygons``) at the original size as "L" (255 = object)."""
    if "mask" in spec:
        return read_mask_file(spec["mask"], size, sample, quality)
    canvas = Image.new("L", tuple(size), 0)
    draw = ImageDraw.Draw(canvas)
    boxes: Sequence = spec.get("boxes") or []
    polygons: Sequence = spec.get("polygons") or []
    if not isinstance(boxes, (list, tuple)) or not isinstance(polygons, (list, tuple)):
        raise MaskError(f"{sample}: boxes and polygons are lists (one entry per object)")
    for index, box in enumerate(boxes):
        x0, y0, x1, y1 = checked_box(box, size, sample, index)
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=255)  # boxes are exclusive at x1, y1
    for index, polygon in enumerate(polygons):
        draw.polygon(checked_polygon(polygon, size, sample, index), fill=255)
    return canvas
